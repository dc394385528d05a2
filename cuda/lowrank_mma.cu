// lowrank_mma.cu — low-rank projection on the int8 tensor cores (after common.cuh, mma.cuh):
// out[B,H,T,latent_out] = x[B,Hin,T,D] . W[H,D,N], dequantized as (acc * w_scale) * a_scale.
//
// Bound by writing the output (f32 at BDH sizes: 4 bytes per 512 int ops), so each CTA keeps
// its 128 rows of A (i8x4 words; codes and f32 inputs are packed once beforehand by
// mma_prep_a) in smem for the whole of K and walks a contiguous run of 128-column tiles over
// the flattened (head, column) space, streaming weight chunks through a LB_MMA_STAGES-deep
// cp.async ring; finished tiles go straight from registers to global memory with 16-byte
// streaming stores while the next tile's loads are in flight. Two CTAs per SM keep the
// stores of one overlapping the mma of the other.
//
// Grid: (CTAs per row block, ceil(M / 128)). Dynamic smem: A [128][kpw + 4] words, then the
// ring [STAGES][BKW][BN + 4] words. Glossary: mma.cuh, common.cuh.

#ifndef LB_OUT
#define LB_OUT 0  // output dtype of the interior epilogue: 0 f32, 1 f16, 2 bf16 (= p.out_dtype)
#endif
#ifndef LB_RELU
#define LB_RELU 0  // fused ReLU (= p.relu)
#endif

#if defined(LB_MMA_SMALL)
// M <= 16 (any M for ternary2 weights where lowrank_wgmma does not run; a row block of 16 per
// grid z): lb_mma_small, split = head.
extern "C" __global__ void __launch_bounds__(LB_MS_THREADS, 1) lowrank_mma_small(LbProblem p) {
    lb_trace_at(0);
    lb_mma_small<LB_MODE, LB_UNS != 0, LB_MS_T2 != 0>(p);
    lb_trace_at(3);
}
#elif defined(LB_WGMMA)
// sm_90a only (compiled for `sm_90a`): the projection on warpgroup mma (wgmma), the weights
// resident. CTA (x, y) owns head h = x / tiles_n and the LB_WG_BN = 256 weight columns of
// tile x % tiles_n, all kpw k words, in smem for its whole life (the weights are read once).
// Its LB_WG_PAIRS (2, or 1: smem for two CTAs per SM) pairs of warpgroups walk the 64-row tiles:
// pair P tiles PAIRS y + P, + PAIRS gridDim.y, ... of A with its own LB_WG_NB cp.async
// buffers and named barrier, and warpgroup j of the pair
// computes and stores columns 128j..128j+127 of the tile as two 64-column halves, each half's
// mma running while the other half is stored (see the comment above the tile loop). The pairs
// drift apart too, with four warps per scheduler to hide the epilogue's latency. Dynamic smem
// (from a 1024-byte aligned base): the weight tile, then [pair][buffer] A tiles, each in
// 128-byte swizzled planes.
//
// Glossary (see also mma.cuh, common.cuh)
//   wgmma     wgmma.mma_async.sync.aligned.m64n64k32.s32.{s8|u8}.s8: D[64x64] (i32, 32
//             registers per thread) += A[64x32] B[64x32]^T, both operands read from smem
//             through 64-bit matrix descriptors, issued by one warpgroup (4 warps); the two
//             halves of a warpgroup's 64 x 128 tile are d[0..31] and d[32..63]
//   plane     an operand tile of R rows is stored as kpw/32 planes of R x 128 bytes (128 k of
//             each row), plane p at byte p * R * 128: row r at r * 128, its 16-byte chunk c
//             (16 k) at ((c ^ (r % 8)) * 16): wgmma's 128-byte-swizzle K-major layout (atoms of
//             8 rows x 128 bytes, SBO = 1024), so a warp's cp.asyncs read whole 128-byte lines
//             and write 128 contiguous bytes per quarter warp. k32 step s reads plane s / 4 from
//             byte 32 (s % 4) of each row
//   D frag    register i of d[64] (warp w of the warpgroup, lane l) is row 16w + l/4 + 8
//             ((i/2) % 2), smem column c = 128j + 8 (i/4) + 2 (l%4) + i%2
//   perm      smem weight row c holds output column lb_wg_col(c) = 8G (c/8G) + 2G ((c%8)/2) +
//             2 ((c/8)%G) + c%2 (G = LB_WG_G): each thread's 2G outputs per row and 8G-column
//             group are contiguous, one 16-byte store (a bijection: the sums are unchanged)

// Tile shape, pairs and threads come from Rust (WGMMA_BN, WGMMA_BM, wgmma_pairs and
// WGMMA_PAIR_THREADS in mma.rs); the code below is written for these values only.
#ifndef LB_WG_PAIRS
#define LB_WG_PAIRS 2  // warpgroup pairs per CTA (1: smem for two CTAs per SM at D <= 256)
#endif
#if LB_WG_BN != 256 || LB_WG_BM != 64 || (LB_WG_PAIRS != 1 && LB_WG_PAIRS != 2) ||              \
    LB_WG_THREADS != 256 * LB_WG_PAIRS || LB_WG_NB < 2 || LB_WG_NB > 3 || LB_WG_NP < 1 ||       \
    LB_WG_NP > 3 || (LB_WG_SPLIT != 0 && LB_WG_SPLIT != 1)
#error "lowrank_wgmma: BN 256, BM 64, PAIRS 1 or 2 of 256 threads, NB 2 or 3, NP 1 to 3"
#endif

#ifndef LB_WG_T2
#define LB_WG_T2 0  // ternary2 weights (mma.cuh's glossary), expanded into the weight tile
#endif
#ifndef LB_WG_WHALVES
#define LB_WG_WHALVES 0  // i8x4 weight tile in two column halves (cp.async groups), see below
#endif
#if LB_WG_WHALVES && (LB_WG_T2 || !LB_WG_SPLIT)
// (f32 output, one wgmma group per tile: its first tile in two groups made ptxas serialize
// every wgmma, C7511.)
#error "lowrank_wgmma: LB_WG_WHALVES is for i8x4 weight tiles and 16-bit outputs"
#endif

// Output columns per thread and row in each 8G-column group: 4 f32 or 8 f16/bf16 (16 bytes).
#define LB_WG_G (LB_OUT == 0 ? 2 : 4)

__device__ __forceinline__ int lb_wg_col(int c) {
    return 8 * LB_WG_G * (c / (8 * LB_WG_G)) + 2 * LB_WG_G * ((c & 7) >> 1) +
           2 * ((c >> 3) & (LB_WG_G - 1)) + (c & 1);
}

// Named barrier `id` (1, 2: one per pair) over 256 threads.
__device__ __forceinline__ void lb_pair_bar(int id) {
    asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}

template <bool UNS>
__device__ __forceinline__ void lb_lowrank_wgmma(const LbMma& p) {
    extern __shared__ __align__(128) u32 lb_dyn_smem[];
    constexpr int np = LB_WG_NP;  // 128-byte planes per row (kpw / 32)
    const int a_plane = LB_WG_BM * 128, b_plane = LB_WG_BN * 128;
    const int tile_bytes = np * a_plane;
    const unsigned base = lb_smem(lb_dyn_smem);
    unsigned char* Bs = (unsigned char*)lb_dyn_smem + (((base + 1023) & ~1023u) - base);
    unsigned char* As = Bs + np * b_plane;  // [pair][stage] tiles

    // pair and jn through a shuffle: ptxas then knows them warp-uniform, so the tile loop
    // (which keeps wgmma groups in flight across iterations) is not a divergent path.
    const int tid = threadIdx.x, pt = tid & 255;
    const int pair = __shfl_sync(0xffffffffu, tid >> 8, 0);
    const int jn = __shfl_sync(0xffffffffu, (tid >> 7) & 1, 0);
    const int h = blockIdx.x / p.tiles_n, n0 = (blockIdx.x % p.tiles_n) * LB_WG_BN;
    const int ah = p.a_heads == 1 ? 0 : h;
    // In a chain after mma_prep_a or mma_prep_scale_a (p.pdl): the weights are not that
    // kernel's output, and every kernel before it is complete once this one starts (lb_pdl_chain),
    // so their L2 prefetch and the weight tile below overlap it; the wait comes before A. The
    // prefetch is in bulk (a row per thread): from f32 input at M = 512 it measured 0.9 µs
    // faster than line by line on the H100 (1.1 µs with bf16 + ReLU), the same packed.
    lb_pdl_prefetch(p.pdl, LB_PF_BULK, p.b + (long long)h * p.b_head_rows * p.ldb, p.ldb, 0,
                    LB_WG_T2 ? (p.kw + 15) / 16 * 4 : p.kw, n0,
                    min(n0 + LB_WG_BN, min(p.ncols, p.bcols)));

    const int m_tiles = (p.m_total + LB_WG_BM - 1) / LB_WG_BM;
    const int first = blockIdx.y * LB_WG_PAIRS + pair, step = gridDim.y * LB_WG_PAIRS;
    unsigned char* Ap = As + pair * LB_WG_NB * tile_bytes;
    const u32* A = (const u32*)p.a;
    const long long ah_off = (long long)ah * p.time * p.lda;

    // This thread's share of an A tile: chunk c = pt % 8 of rows r0 = pt / 8 and r0 + 32, in
    // every plane (8 consecutive threads read one row's 128 bytes of a plane). One cp.async
    // group per call, empty past the last tile.
    const int ck = pt & 7, r0 = pt >> 3;
    const int s_off = r0 * 128 + ((ck ^ (r0 & 7)) << 4);
    auto load_a = [&](int tile, int s) {
        unsigned char* dst = Ap + s * tile_bytes + s_off;
        if (tile < m_tiles) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int m = tile * LB_WG_BM + r0 + 32 * rr;
                const u32* src = A;
                bool row_ok = m < p.m_total;
                if (row_ok) {
                    long long row = m;
                    if (p.a_heads != 1) row += (long long)(m / p.time) * (p.a_heads - 1) * p.time;
                    src = A + row * p.lda + ah_off;
                }
                for (int pl = 0; pl < np; ++pl) {
                    const int q = pl * 32 + ck * 4;
                    const int valid = row_ok && q < p.kw ? min(4, p.kw - q) * 4 : 0;
                    lb_cp16((u32*)(dst + pl * a_plane + rr * 32 * 128), valid ? src + q : A, valid);
                }
            }
        }
        lb_commit();
    };

    // Without a chain (p.pdl 0) nothing waits, and the pair's first A tile goes first, so
    // that its round trip overlaps the weight tile's issue; in a chain it must follow the
    // wait. Either way the first two cp.async groups are that tile and the weight tile.
    if (p.pdl == 0) load_a(first, 0);

#if LB_WG_T2
    // The weight tile from ternary2 rows (mma.cuh): column c's t2 words of rows 4 q16 + r,
    // r = 0..3, are its k words 16 q16..16 q16 + 15, word 16 q16 + 4j + r in slot j of row
    // 4 q16 + r, so each q16 gives four 16-byte smem chunks (words 16 q16 + 4j..+3). Zero past
    // N, latent_out and kw. Pair P takes q16 = P + PAIRS i, i < 2 NP / PAIRS (kpw = 32 NP).
    // Every word is loaded here, before the wait. Without a chain they are expanded into smem
    // only after the first A tiles are queued, so the weights' and A's DRAM round trips overlap
    // (expanding each q16 as it arrived made NP + 1 round trips in a row before the first
    // mma); in a chain they arrive during the wait and are expanded before it, off the path
    // after it (expanding them after it cost the f32-input chain 0.7 us at M = 512 on the
    // H100).
    const int t2_n = n0 + lb_wg_col(pt);
    const bool t2_col_ok = t2_n < p.ncols && t2_n < p.bcols;
    constexpr int T2Q = 2 * LB_WG_NP / LB_WG_PAIRS;  // q16 per pair
    u32 t2w[T2Q][4];
    {
        const u32* w = p.b + (long long)h * p.b_head_rows * p.ldb + t2_n;
#pragma unroll
        for (int i = 0; i < T2Q; ++i) {
            const int q16 = pair + LB_WG_PAIRS * i;
            const bool ok = t2_col_ok && 16 * q16 < p.kw;
#pragma unroll
            for (int r = 0; r < 4; ++r)
                t2w[i][r] = ok ? lb_ldw(w + (long long)(4 * q16 + r) * p.ldb) : 0u;
        }
        lb_commit();  // an empty group: the A tiles' group count stays as below
    }
    auto expand_t2 = [&]() {
        unsigned char* row = Bs + pt * 128;
#pragma unroll
        for (int i = 0; i < T2Q; ++i) {
            const int q16 = pair + LB_WG_PAIRS * i;
            const bool ok = t2_col_ok && 16 * q16 < p.kw;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int q = 16 * q16 + 4 * j;
                const int off = (q >> 5) * b_plane + ((((q >> 2) & 7) ^ (pt & 7)) << 4);
                *(uint4*)(row + off) =
                    ok ? make_uint4(lb_t2_expand(t2w[i][0], j), lb_t2_expand(t2w[i][1], j),
                                    lb_t2_expand(t2w[i][2], j), lb_t2_expand(t2w[i][3], j))
                       : make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
    if (p.pdl != 0) expand_t2();
#elif LB_WG_WHALVES
    // The weight tile as above, in two cp.async groups: column half 0 (smem rows 64 H' + 0..63
    // of each warpgroup H') then half 1, so that the first tile's half 0 is multiplied and
    // stored while half 1 is still on its way (the 64 KB tiles of every CTA come cold from DRAM
    // at once: the H100 trace at M = 512 had them ready 2.3 us after ternary2's 16 KB). Two
    // threads per row: thread e = pt / 128 takes words q = pair + PAIRS (2 i + e), so that the
    // offsets stay compile-time but for 4 PAIRS e bytes.
    {
        const int e = pt >> 7;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int c = 128 * ((pt >> 6) & 1) + 64 * half + (pt & 63);
            const int n = n0 + lb_wg_col(c);
            const bool col_ok = n < p.ncols && n < p.bcols;
            const u32* w = p.b + (long long)h * p.b_head_rows * p.ldb + n;
            unsigned char* row = Bs + c * 128 + 4 * pair + 4 * LB_WG_PAIRS * e;
            const int q0 = pair + LB_WG_PAIRS * e;
            const u32* wp = w + (long long)q0 * p.ldb;
#pragma unroll
            for (int i = 0; i < 16 * LB_WG_NP / LB_WG_PAIRS; ++i) {
                const int qi = 2 * LB_WG_PAIRS * i;  // q - q0
                const bool ok = col_ok && q0 + qi < p.kw;
                const int off =
                    (qi >> 5) * b_plane + ((((qi >> 2) & 7) ^ (c & 7)) << 4) + 4 * (qi & 3);
                lb_cp4((u32*)(row + off), ok ? wp + (long long)qi * p.ldb : w, ok ? 4 : 0);
            }
            lb_commit();
        }
    }
#else
    // The weight tile, gathered word by word by 4-byte cp.asyncs: smem row c is column
    // n0 + lb_wg_col(c) (zero past N, latent_out and kw).
    {
        const int c = pt, n = n0 + lb_wg_col(c);
        const bool col_ok = n < p.ncols && n < p.bcols;
        const u32* w = p.b + (long long)h * p.b_head_rows * p.ldb + n;
        // Pair P takes k words q = P + PAIRS i, i < 32 NP / PAIRS (kpw = 32 NP). With two
        // pairs q / 32 = i / 16, (q / 4) % 8 = (i / 2) % 8 and q % 4 = P + 2 (i % 2): offsets
        // fixed at compile time but for P and the swizzle (a runtime loop spent ~22
        // instructions per word); with one, q = i.
        unsigned char* row = Bs + c * 128 + 4 * pair;
        const u32* wp = w + (long long)pair * p.ldb;
#pragma unroll
        for (int i = 0; i < 32 * LB_WG_NP / LB_WG_PAIRS; ++i) {
            const int qi = LB_WG_PAIRS * i;  // q - P
            const bool ok = col_ok && pair + qi < p.kw;
            const int off =
                (qi >> 5) * b_plane + ((((qi >> 2) & 7) ^ (c & 7)) << 4) + 4 * (qi & 3);
            lb_cp4((u32*)(row + off), ok ? wp + (long long)qi * p.ldb : w, ok ? 4 : 0);
        }
        lb_commit();
    }
#endif

    lb_pdl_wait(p.pdl);
    lb_trace_at(1);
    // A device scale may be the previous kernel's output (lb_scale: a coherent load, after
    // the wait). Loaded here, its round trip overlaps the A tiles'; written after the block
    // barrier below, it was issued after the first mma.
    const float a_scale = lb_scale(p.scale_ptr, p.scale_param);

    if (p.pdl != 0) load_a(first, 0);
    load_a(first + step, 1);
#if LB_WG_T2
    if (p.pdl == 0) expand_t2();
#endif
#if LB_WG_WHALVES
    // Groups A0, W0, W1, A1 without a chain, W0, W1, A0, A1 in one: A0 and weight half 0.
    if (p.pdl == 0) {
        lb_wait<2>();
    } else {
        lb_wait<1>();
    }
#else
    lb_wait<1>();
#endif
    lb_fence_async_smem();
    __syncthreads();  // the weight tile (LB_WG_WHALVES: half 0) and the pair's first A tile
    lb_trace_at(2);

    const int warp = (tid >> 5) & 3, lane = tid & 31;
    // 16-byte stores: f32 rows of 4k elements, f16/bf16 rows of 8k, the whole tile valid.
    const bool vec = p.c_vec && (LB_OUT == 0 || p.ldc % 8 == 0) && n0 + LB_WG_BN <= p.ncols;
    const int cb = 128 * jn;  // this warpgroup's first smem column (weight row)
    const u64 da0 = lb_wg_desc(Ap), db0 = lb_wg_desc(Bs + cb * 128);
    const int tile16 = tile_bytes >> 4, a16 = a_plane >> 4, b16 = b_plane >> 4;
    int d[64];

    // Column half H (64 columns; H = 2: all 128) of the tile in A buffer s: one wgmma group.
    auto mma = [&](int s, int H) {
        const u64 da = da0 + (u64)(s * tile16), db = db0 + (u64)((H & 1) * 64 * 128 >> 4);
        lb_wg_fence();
        if (H == 2) {
            lb_wgmma_steps<UNS, 2, np>(d, da, db, a16, b16);
        } else if (H == 0) {
            lb_wgmma_steps<UNS, 0, np>(d, da, db, a16, b16);
        } else {
            lb_wgmma_steps<UNS, 1, np>(d, da, db, a16, b16);
        }
        lb_wg_commit();
    };
    // Stores column half H (H = 2: both) of the tile: this thread's rows and the half's
    // 8G-column groups.
    auto store = [&](int tile, int H) {
        int o[2];  // this thread's output rows (b, h, t), -1 past M
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            const int m = tile * LB_WG_BM + 16 * warp + (lane >> 2) + 8 * rh;
            const int b = m / p.time, t = m - b * p.time;
            o[rh] = m < p.m_total ? (b * p.o_heads + h) * p.time + t : -1;
        }
#pragma unroll
        for (int gi = 0; gi < (H == 2 ? 16 : 8) / LB_WG_G; ++gi) {
            const int g = (H & 1) * 8 / LB_WG_G + gi;
            // Every register is read on a uniform path, then stored under the bounds: ptxas
            // would otherwise wait for every wgmma in flight (serializing them all, C7518).
            const int col = cb + 8 * LB_WG_G * g + 2 * LB_WG_G * (lane & 3);
#pragma unroll
            for (int rh = 0; rh < 2; ++rh) {
                float v[2 * LB_WG_G];
#pragma unroll
                for (int e = 0; e < 2 * LB_WG_G; ++e)
                    v[e] = lb_dequant(d[(LB_WG_G * g + (e >> 1)) * 4 + 2 * rh + (e & 1)],
                                      p.w_scale, a_scale, LB_RELU);
                if (o[rh] < 0) continue;
                const long long oc = (long long)o[rh] * p.ldc + n0 + col;
                if (vec) {
                    // Plain stores: streaming ones (st.global.cs) measured slower, by 1.5-2 %
                    // for 16-bit outputs and 2-8 % for f32 (except f32 in at M = 8192).
                    if (LB_OUT == 0) {
                        *(float4*)((float*)p.out + oc) = make_float4(v[0], v[1], v[2], v[3]);
                    } else {
                        *(uint4*)((unsigned short*)p.out + oc) =
                            make_uint4(lb_pack2(v[0], v[1], LB_OUT), lb_pack2(v[2], v[3], LB_OUT),
                                       lb_pack2(v[4 % (2 * LB_WG_G)], v[5 % (2 * LB_WG_G)], LB_OUT),
                                       lb_pack2(v[6 % (2 * LB_WG_G)], v[7 % (2 * LB_WG_G)], LB_OUT));
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < 2 * LB_WG_G; ++e)
                        if (n0 + col + e < p.ncols) lb_store(p.out, oc + e, v[e], LB_OUT);
                }
            }
        }
    };

    // Tile j lives in A buffer j % NB. Each loop below is straight-line code (a constant
    // `more` per call: accumulators in flight across a branch make ptxas serialize every
    // wgmma, C7518), and every wait is for all groups (ptxas serializes them too when a
    // wait_group<1> retires a group issued before a loop's back edge, C7514).
    //
    // LB_WG_SPLIT (16-bit outputs): each column half is its own wgmma group, issued when the
    // previous one is complete, so that it runs while the previous half is stored: (j, 1)
    // during the stores of (j, 0), (j + 1, 0) during those of (j, 1). With NB = 3 the buffer
    // of j - 1 (both its groups complete in both warpgroups by the pair barrier of j + 1)
    // takes j + 2 there; with NB = 2 the buffer of j takes j + 2 after a second barrier.
    // Otherwise (f32, whose stores alone take the write floor's time): one group per tile,
    // stored once complete; at the barrier of j + 1 the buffer of j (NB = 2) or j - 1 takes j + 2.
    //
    // LB_WG_WHALVES without a chain (in one, the whole tile has landed during the PDL wait):
    // the pair's first tile (`whalf`) is issued as half 0 alone; its stores are issued before
    // the wait for weight half 1, then half 1 is issued. (A separate first iteration spilled
    // at 128 registers.) A pair with no tile still meets the block barrier that makes half 1
    // visible.
    auto weight_half_1 = [&]() {
        lb_wait<1>();  // every group but the last (A1): weight half 1 landed
        lb_fence_async_smem();
        __syncthreads();
    };
    auto body = [&](int tile, int s, bool more) {
        const int sn = s + 1 == LB_WG_NB ? 0 : s + 1;  // the next tile's buffer
        const int free_buf = LB_WG_NB == 3 ? (s == 0 ? 2 : s - 1) : s;
        const bool whalf = LB_WG_WHALVES && p.pdl == 0 && tile == first;
        lb_wg_wait<0>();  // half 0 (LB_WG_SPLIT) or all of this tile
        if (LB_WG_SPLIT) {
            if (whalf) {
                store(tile, 0);
                weight_half_1();
            }
            mma(s, 1);
            if (!whalf) store(tile, 0);
            if (more) {
                lb_wait<0>();
                lb_fence_async_smem();
                lb_pair_bar(1 + pair);  // the next tile's A visible to both warpgroups
                if (LB_WG_NB == 3) load_a(tile + 2 * step, free_buf);
            }
            lb_wg_wait<0>();  // half 1 of this tile
            if (more) {
                if (LB_WG_NB == 2) {
                    lb_pair_bar(1 + pair);  // both warpgroups are past this tile's mma
                    load_a(tile + 2 * step, free_buf);
                }
                mma(sn, 0);
            }
            store(tile, 1);
        } else {
            store(tile, 2);
            if (more) {
                lb_wait<0>();
                lb_fence_async_smem();
                lb_pair_bar(1 + pair);  // the next tile's A visible, this tile's mma done
                load_a(tile + 2 * step, free_buf);
                mma(sn, 2);
            }
        }
        return sn;
    };
    if (first < m_tiles) {
        mma(0, LB_WG_SPLIT ? 0 : 2);
        int tile = first, s = 0;
        for (; tile + step < m_tiles; tile += step) s = body(tile, s, true);
        body(tile, s, false);
    } else if (LB_WG_WHALVES && p.pdl == 0) {
        lb_wait<0>();  // this pair's share of weight half 1, for the other pair
        lb_fence_async_smem();
        __syncthreads();
    }
    lb_wait<0>();
}

extern "C" __global__ void __launch_bounds__(LB_WG_THREADS, 1) lowrank_wgmma(LbMma p) {
    lb_trace_at(0);
    lb_lowrank_wgmma<LB_UNS != 0>(p);
    lb_trace_at(3);
}
#else

// The warp tile's outputs with the epilogue fixed at compile time, for tiles whose columns
// are all valid and 16-byte aligned (c_vec): no per-element branches. Rows >= M are skipped.
__device__ __forceinline__ void lb_lowrank_store(const LbMma& p, const LbAcc& acc, const int* s_row,
                                                 int r0, int m_left, long long hoff, int col0,
                                                 float a_scale) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            const int r = r0 + mi * 16 + rh * 8 + g;
            if (r >= m_left) continue;
            const long long o = s_row[r] + hoff + col0 + 4 * t;
#pragma unroll
            for (int h = 0; h < LB_MMA_NI / 4; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float f[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        f[j] = lb_dequant(acc[mi][4 * h + j][2 * rh + e], p.w_scale, a_scale, LB_RELU);
                    lb_stcs4(p.out, o + 32 * h + 16 * e, f, LB_OUT);
                }
        }
}

template <bool UNS>
__device__ __forceinline__ void lb_lowrank_mma(const LbMma& p) {
    extern __shared__ __align__(16) u32 lb_dyn_smem[];
    __shared__ int s_row[LB_MMA_BM];  // output offset of row m0 + r for head 0
    const int lda_s = p.kpw + LB_MMA_APAD;
    u32* As = lb_dyn_smem;
    u32* Bs = lb_dyn_smem + LB_MMA_BM * lda_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / LB_MMA_WN, wn = warp % LB_MMA_WN;
    const int m0 = blockIdx.y * LB_MMA_BM;
    const int tiles_total = p.heads * p.tiles_n;
    const int t_begin = (int)((long long)blockIdx.x * tiles_total / gridDim.x);
    const int t_end = (int)((long long)(blockIdx.x + 1) * tiles_total / gridDim.x);
    const int nkc = p.kpw / LB_MMA_BKW;
    const int units = (t_end - t_begin) * nkc;
    if (units <= 0) return;  // uniform over the CTA
    const float a_scale = lb_scale(p.scale_ptr, p.scale_param);
    const int head_stride = p.time * (int)p.ldc;  // out elements per head (< 2^31: checked)

    if (tid < LB_MMA_BM) {
        const int m = m0 + tid;
        int off = 0;
        if (m < p.m_total) {
            const int b = m / p.time, t = m - b * p.time;
            off = (b * p.o_heads * p.time + t) * (int)p.ldc;
        }
        s_row[tid] = off;
    }

    // Weight chunks are loaded in unit order (tile, then chunk), tracked by counters rather
    // than divisions.
    const int tile_cols = p.tiles_n * LB_MMA_BN;
    int l_u = 0, l_kc = 0, l_h = t_begin / p.tiles_n, l_n0 = (t_begin % p.tiles_n) * LB_MMA_BN;
    auto load_next = [&]() {
        if (l_u < units) {
            lb_load_b(p, Bs + (l_u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB,
                      p.b + (long long)l_h * p.b_head_rows * p.ldb, l_kc * LB_MMA_BKW, l_n0);
            ++l_u;
            if (++l_kc == nkc) {
                l_kc = 0;
                l_n0 += LB_MMA_BN;
                if (l_n0 == tile_cols) {
                    l_n0 = 0;
                    ++l_h;
                }
            }
        }
        lb_commit();  // always, so that group u is unit u
    };
    // The CTA's 128 A rows of input head `ah`, all kpw words (zero past the valid K and M).
    auto load_a = [&](int ah) {
        const int qpr = p.kpw / 4;
        for (int i = tid; i < LB_MMA_BM * qpr; i += LB_THREADS) {
            const int r = i / qpr, q = (i - r * qpr) * 4;
            const int m = m0 + r;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (m < p.m_total && q < p.kw) {
                const int b = m / p.time, t = m - b * p.time;
                const long long row = ((long long)(b * p.a_heads + ah) * p.time + t) * p.lda;
                v = lb_a_word4<LB_A_PACKED>((const void*)((const u32*)p.a + row), q, p.a_kvalid,
                                            0.0f, 0, p.a_vec != 0);
            }
            *(uint4*)(As + r * lda_s + q) = v;
        }
    };

#pragma unroll
    for (int u = 0; u < LB_MMA_STAGES - 1; ++u) load_next();

    LbAcc acc;
    lb_acc_zero(acc);
    int cur_ah = -1;
    int h = t_begin / p.tiles_n, n0 = (t_begin % p.tiles_n) * LB_MMA_BN, kc = 0;
    const u32* a_warp = As + (wm * 64) * lda_s;
    for (int u = 0; u < units; ++u) {
        if (kc == 0) {
            const int ah = p.a_heads == 1 ? 0 : h;
            if (ah != cur_ah) {  // uniform over the CTA
                __syncthreads();  // every warp is done with the previous A
                load_a(ah);
                cur_ah = ah;
            }
        }
        lb_wait<LB_MMA_STAGES - 2>();
        __syncthreads();  // chunk u (and a new A) visible; stage (u-1) % STAGES free
        load_next();
        lb_mma_chunk<UNS>(acc, a_warp + kc * LB_MMA_BKW, lda_s,
                          Bs + (u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB + wn * LB_MMA_NI * 8,
                          lane);
        if (++kc == nkc) {
            const int col0 = n0 + wn * LB_MMA_NI * 8;
            const long long hoff = (long long)h * head_stride;
            if (p.c_vec && n0 + LB_MMA_BN <= p.ncols) {
                lb_lowrank_store(p, acc, s_row, wm * 64, p.m_total - m0, hoff, col0, a_scale);
            } else {
                lb_mma_store(p, acc, m0 + wm * 64, col0, (int*)nullptr, a_scale,
                             [&](int m) { return (long long)s_row[m - m0] + hoff; });
            }
            lb_acc_zero(acc);
            kc = 0;
            n0 += LB_MMA_BN;
            if (n0 == tile_cols) {
                n0 = 0;
                ++h;
            }
        }
    }
    lb_wait<0>();
}

extern "C" __global__ void __launch_bounds__(LB_THREADS, 2) lowrank_mma(LbMma p) {
    lb_lowrank_mma<LB_UNS != 0>(p);
}
#endif
