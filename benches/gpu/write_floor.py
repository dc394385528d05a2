# Write floor of the low-rank epilogue on this card (BENCHMARKS.md, "Low-rank on warpgroup mma"):
# torch fill_, cudaMemsetAsync, 16-byte stores in address order (a grid-stride loop, and one pass
# as fill_ launches), and the epilogue's pattern (each CTA a strip of every output row, a warp 8
# rows x 64 bytes; also 4 rows x 128 and 1 row x 512 bytes; and whole row strips stored from
# shared memory by the TMA unit), f32 and bf16 outputs at BDH sizes, CUDA events.
# Strip variants: ry CTAs per strip (the row tiles dealt over them: more warps per SM) and rot
# (each strip starts rot tiles further on per CTA, so concurrent strips write different rows).
# Work items (strip_items): the strips cut into row chunks, scheduled by the hardware (one
# per block) or taken by persistent blocks from a counter, optionally re-reading a 64 KB weight
# tile per item: is a static persistent partition what the loops lose to fill_?
# Usage on the GPU machine: [FLUSH=1] python3 benches/gpu/write_floor.py
import os
import cupy as cp, numpy as np, torch
src = r'''
extern "C" __global__ void lin(uint4* out, long long n16, int cs) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n16; i += (long long)gridDim.x * blockDim.x) {
    uint4 v = make_uint4(i, 1, 2, 3);
    if (cs) __stcs(out + i, v); else out[i] = v;
  }
}
// CTA x owns a strip of SB bytes per row (cols), walks all rows in tiles of 64 per warpgroup,
// a warp 16 rows of each; each warp store: 32 / LPR rows x (LPR lanes x 16 B). LPR = 4 is the
// epilogue's pattern (8 rows x 64 B: two 64-byte halves of eight 128-byte lines), LPR = 8 four
// whole lines (4 rows x 128 B), LPR = 32 one row x 512 B. rowbytes = bytes per row.
// Grid y (ry CTAs per strip) deals the 64-row tiles over ry CTAs (more warps per SM); rot
// rotates each strip's first tile by blockIdx.x * rot tiles (strips not all on the same rows).
extern "C" __global__ void strip(char* out, int rows, long long rowbytes, int sb, int lpr, int rot) {
  const int tid = threadIdx.x, wg = tid >> 7, wt = tid & 127, warp = wt >> 5, lane = tid & 31;
  const long long x0 = (long long)blockIdx.x * sb;
  const int rpi = 32 / lpr, span = 16 * lpr, ntiles = (rows + 63) / 64;
  for (int ti = wg + 2 * blockIdx.y; ti < ntiles; ti += 2 * gridDim.y) {
    const int tile = (ti + blockIdx.x * rot) % ntiles;
    for (int rb = 0; rb < 16; rb += rpi) {
      int r = tile * 64 + 16 * warp + rb + lane / lpr;
      if (r >= rows) continue;
      char* o = out + r * rowbytes + x0 + 16 * (lane % lpr);
      for (int g = 0; g < sb / span; ++g) {
        uint4 v = make_uint4(r, g, 2, 3);
        *(uint4*)(o + span * g) = v;
      }
    }
  }
}
// One pass, no loop, as torch's vectorized fill_ launches: each thread 4 x 16 B, a block 16
// contiguous KiB.
extern "C" __global__ void onepass(uint4* out, long long n16) {
  const long long base = (long long)blockIdx.x * blockDim.x * 4 + threadIdx.x;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const long long i = base + j * blockDim.x;
    if (i < n16) out[i] = make_uint4(i, 1, 2, 3);
  }
}
// The strip pattern (as `strip`: CTA x owns sb bytes of every row) stored by the TMA unit:
// the CTA fills a shared tile of 16 rows x sb bytes (two buffers), then 16 threads each issue
// one bulk copy of a row to global memory, as a TMA-store epilogue would. sb <= 1024.
extern "C" __global__ void __launch_bounds__(256) tma_strip(char* out, int rows, long long rowbytes, int sb) {
  __shared__ __align__(128) uint4 buf[2][16 * 1024 / 16];
  const int tid = threadIdx.x;
  const long long x0 = (long long)blockIdx.x * sb;
  const int tiles = (rows + 15) / 16;
  for (int t = 0; t < tiles; ++t) {
    uint4* b = buf[t & 1];
    // The copies that read this buffer two tiles ago (each issuing thread's older group).
    if (tid < 16 && t >= 2) asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
    __syncthreads();
    for (int q = tid; q < sb; q += blockDim.x) b[q] = make_uint4(t, q, 2, 3);  // 16 rows x sb B
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    if (tid < 16) {
      const int r = t * 16 + tid;
      if (r < rows) {
        const unsigned src = (unsigned)__cvta_generic_to_shared(b + tid * (sb / 16));
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
                     :: "l"(out + r * rowbytes + x0), "r"(src), "r"(sb) : "memory");
      }
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
  }
  if (tid < 16) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}
// Work items (strip x of sb bytes per row, chunk c of `chunk` rows), strip fastest: item i is
// blockIdx.x (counter null: one item per block, the hardware schedules them), or taken from
// *counter by persistent blocks until none is left (dynamic). Before its stores an item reads
// w16 16-byte words of strip x's weights from wsrc (L2-resident), as a CTA changing strips
// would reload its weight tile. Stores as strip's 8 x 64 B pattern.
extern "C" __global__ void __launch_bounds__(256) strip_items(char* out, int rows, long long rowbytes,
    int sb, int chunk, unsigned* counter, const uint4* wsrc, int w16) {
  __shared__ int item_s;
  const int tid = threadIdx.x, wg = tid >> 7, wt = tid & 127, warp = wt >> 5, lane = tid & 31;
  const int nstrips = (int)(rowbytes / sb), nchunks = (rows + chunk - 1) / chunk;
  unsigned k = 0;
  for (int it = 0;; ++it) {
    int item;
    if (counter) {
      __syncthreads();
      if (tid == 0) item_s = (int)atomicAdd(counter, 1u);
      __syncthreads();
      item = item_s;
    } else {
      if (it > 0) break;
      item = blockIdx.x;
    }
    if (item >= nstrips * nchunks) break;
    const int x = item % nstrips, c = item / nstrips;
    for (int q = tid; q < w16; q += 256) k += wsrc[(long long)x * w16 + q].x;
    const long long x0 = (long long)x * sb;
    const int r1 = min(rows, (c + 1) * chunk);
    for (int tile = c * chunk + 64 * wg; tile < r1; tile += 128)
      for (int rb = 0; rb < 16; rb += 8) {
        const int r = tile + 16 * warp + rb + lane / 4;
        if (r >= r1) continue;
        char* o = out + r * rowbytes + x0 + 16 * (lane % 4);
        for (int g = 0; g < sb / 64; ++g) *(uint4*)(o + 64 * g) = make_uint4(r, g, k, 3);
      }
  }
}
'''
m = cp.RawModule(code=src, options=("-std=c++17",))
lin, strip = m.get_function("lin"), m.get_function("strip")
onepass, tma_strip = m.get_function("onepass"), m.get_function("tma_strip")
strip_items = m.get_function("strip_items")
# 120 KB of (unused) dynamic smem holds strip_items to one block per SM, as lowrank_wgmma is.
strip_items.max_dynamic_shared_size_bytes = 120 * 1024
counters = cp.zeros(4096, dtype=cp.uint32)  # a fresh zero counter per dynamic launch
used = [0]
wsrc = cp.zeros((8 << 20) // 4, dtype=cp.uint32)
# FLUSH=1: zero 256 MB before each timed run (as lowbit bench and triton's do_bench do), so
# the L2 starts cold and the host's launch latency hides behind the memset.
flush = torch.empty(64 << 20, dtype=torch.int32, device="cuda") if os.environ.get("FLUSH") == "1" else None
def t(f, reps=20):
    f(); cp.cuda.Device().synchronize()
    s, e = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        s.record(); f(); e.record(); e.synchronize(); ts.append(cp.cuda.get_elapsed_time(s, e))
    return float(np.median(ts)) * 1e3
for M, esz in [(2048, 4), (2048, 2), (8192, 2), (512, 2), (512, 4)]:
    nbytes = M * 32768 * esz
    buf = cp.empty(nbytes // 4, dtype=cp.uint32)
    tt = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")
    us_fill = t(lambda: tt.fill_(7))
    res = [f"M={M} esz={esz} {nbytes/1e6:.0f} MB: torch fill {us_fill:.1f}us ({nbytes/us_fill/1e3:.2f} TB/s)"]
    us = t(lambda: cp.cuda.runtime.memsetAsync(buf.data.ptr, 7, nbytes, cp.cuda.get_current_stream().ptr))
    res.append(f"memset {us:.1f}us ({nbytes/us/1e3:.2f})")
    n16 = nbytes // 16
    us = t(lambda: onepass(((n16 + 1023) // 1024,), (256,), (buf, np.int64(n16))))
    res.append(f"onepass {us:.1f}us ({nbytes/us/1e3:.2f})")
    for cs in (0, 1):
        us = t(lambda: lin((132 * 8,), (256,), (buf, np.int64(nbytes // 16), np.int32(cs))))
        res.append(f"lin cs={cs} {us:.1f}us ({nbytes/us/1e3:.2f})")
    sb = 256 * esz
    for lpr, ry, rot in [(4, 1, 0), (8, 1, 0), (32, 1, 0), (4, 2, 0), (4, 4, 0), (4, 1, 1), (4, 1, 7)]:
        us = t(lambda: strip((32768 * esz // sb, ry), (256,), (buf, np.int32(M), np.int64(32768 * esz), np.int32(sb), np.int32(lpr), np.int32(rot))))
        res.append(f"strip{sb}B {32 // lpr}x{16 * lpr}B ry{ry} rot{rot} {us:.1f}us ({nbytes/us/1e3:.2f})")
    nstrips = 32768 * esz // sb
    for chunk, dyn, one, w16 in [(256, 0, 1, 0), (256, 0, 0, 0), (64, 0, 1, 0), (1024, 0, 1, 0),
                                 (256, 1, 1, 0), (256, 1, 1, 4096), (1024, 1, 1, 4096)]:
        nitems = nstrips * ((M + chunk - 1) // chunk)
        grid = 132 if dyn else nitems
        def run():
            ctr = np.uint64(0)
            if dyn:
                ctr = np.uint64(counters.data.ptr + 4 * used[0])
                used[0] += 1
            strip_items((grid,), (256,), (buf, np.int32(M), np.int64(32768 * esz), np.int32(sb),
                        np.int32(chunk), ctr, wsrc, np.int32(w16)),
                        shared_mem=120 * 1024 if one else 0)
        us = t(run)
        res.append(f"items{sb}B chunk{chunk} {'dynamic' if dyn else 'hw-scheduled'}"
                   f"{' 1/SM' if one else ''}{' +64KB reload' if w16 else ''} {us:.1f}us ({nbytes/us/1e3:.2f})")
    us = t(lambda: tma_strip((32768 * esz // sb,), (256,), (buf, np.int32(M), np.int64(32768 * esz), np.int32(sb))))
    res.append(f"strip{sb}B by TMA bulk rows {us:.1f}us ({nbytes/us/1e3:.2f})")
    print(" | ".join(res), flush=True)
