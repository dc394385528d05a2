// wgmma_rate.cu — how fast can `decoder_wgmma`'s loop structure drive the int8 tensor cores,
// with no global memory at all? Each variant runs one CTA per SM on data already in shared
// memory, the same per-chunk steps as the kernel (a chunk = 4 k32 wgmma steps per warpgroup)
// with parts switched on one at a time, and prints the int8 TOPS it reached.
//
// Build and run on the GPU machine (sm_90a), from the project root:
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/wgmma_rate \
//       benches/gpu/wgmma_rate.cu && /tmp/wgmma_rate
// (`bash benches/gpu/sweep.sh wgmmarate` does both.)
//
// Glossary
//   RS / SS   wgmma with A (the weights, 64 output columns per warpgroup) from registers /
//             from shared memory; B (y rows: N = 64 or 128) always from shared memory
//   frags     A registers per chunk as the kernel gets them: const (none loaded), i8x4 (8
//             8-byte smem loads), t2 (2 loads, each slot expanded to i8 by lb_t2_expand),
//             t2u (2 loads, u8 fields, plus the y row sums: one 16-byte load and 4 dp4a per 64
//             rows, as LB_DW_T2U)
//   sync      a __syncthreads every `sync` chunks (the kernel: every chunk at 128 rows,
//             every 2 at 64 rows), 0 for none, MBAR (-1) the handover of LB_DW_MBAR with no
//             loads: per chunk a wait on full[c], an arrive on empty[c - 1], a wait on
//             empty[c - 2], a proxy fence and an arrive on full[c + 2] (13 slots)
//   ld        1: the kernel's y ring from DRAM besides (each CTA streams its own 2 MB slice,
//             a chunk's y bytes per chunk by 16-byte cp.asyncs into a 6-slot ring, loads 4
//             chunks ahead, per chunk cp.async.wait_group 3, fence.proxy.async,
//             __syncthreads, as decoder_wgmma at 128 rows; the wgmma still reads the fixed
//             tile); 2: the same without the proxy fence. Whether the fence waits for the
//             copies still in flight shows as 1 slower than 2
//   SPEC      (sync) warp-specialized ring: a 17th warp alone streams the CTA's y slice into the
//             6 slots (cp.async, 32 pieces per lane per chunk, then cp.async.mbarrier.arrive
//             .noinc on full[slot]: the mbarrier tracks the copies); the 16 mma warps only wait
//             on full[c], take a proxy fence (ld 3; ld 4 without it), and release slot c - 1 on
//             empty once its wgmma is done: the handover a producer warp would give the kernel.

#define LB_WGMMA 1
#include "../../cuda/common.cuh"
#include "../../cuda/mma.cuh"

enum Frags { CONST = 0, I8X4 = 1, T2 = 2, T2U = 3 };
constexpr int MBAR = -1, SPEC = -2, MB_S = 13;

constexpr int LDW = 264;               // weight tile row, words (the kernel's LB_DW_LDW)
constexpr int B_OFF = 0;               // y tile: N rows x 128 bytes (swizzled atoms)
constexpr int A_OFF = 32768;           // SS: 64 x 128 bytes per warpgroup
constexpr int W_OFF = 65536;           // weight tile: 32 rows x LDW words (+ slack)
constexpr int RING_S = 6;              // ld: y ring slots of 16 KB
constexpr int R_OFF = (W_OFF + 34 * LDW * 4 + 1023) / 1024 * 1024;
constexpr int SMEM = R_OFF + RING_S * 16384 + 1024;

template <int N, bool SS, int F, int SYNC, int LD = 0>
__global__ void __launch_bounds__(SYNC == SPEC ? 544 : 512, 1)
    wg_rate(int iters, int* sink, long long* cycles, const uint4* src, int slice_chunks) {
    extern __shared__ __align__(1024) unsigned char raw[];
    unsigned char* sm = raw + ((1024u - (lb_smem(raw) & 1023u)) & 1023u);
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    for (int i = tid; i < (SMEM - 1024) / 4; i += blockDim.x)
        ((u32*)sm)[i] = (u32)i * 2654435761u & 0x3f3f3f3fu;  // small bytes: no overflow
    lb_fence_async_smem();
    __syncthreads();

    constexpr int RH = N / 64;
    const int ck = tid & 7, r0 = tid >> 3;
    const int s_off = B_OFF + r0 * 128 + ((ck ^ (r0 & 7)) << 4);
    const int frag = t * LDW + 64 * wg + 16 * warp + 2 * g;
    const u32* W = (const u32*)(sm + W_OFF);
    const u64 db = lb_wg_desc(sm + B_OFF);
    const u64 da = lb_wg_desc(sm + A_OFF + wg * 8192);
    int d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; ++i) d[i] = 0;
    int ysum[RH];
#pragma unroll
    for (int rr = 0; rr < RH; ++rr) ysum[rr] = 0;

    auto fill = [&](int it, u32(&r)[16]) {
        const u32* ws = W + frag + 2 * (it & 1);  // moves with `it`: the loads stay in the loop
        if (F == I8X4) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const uint2 v = *(const uint2*)(ws + 4 * i * LDW);
                r[2 * i] = v.x;
                r[2 * i + 1] = v.y;
            }
        } else if (F == T2 || F == T2U) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint2 v = *(const uint2*)(ws + 4 * h * LDW);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    r[2 * (4 * h + j)] = lb_t2_areg<F == T2U>(v.x, j);
                    r[2 * (4 * h + j) + 1] = lb_t2_areg<F == T2U>(v.y, j);
                }
            }
            if (F == T2U) {
#pragma unroll
                for (int rr = 0; rr < RH; ++rr)
                    ysum[rr] = lb_sum16<false>(
                        *(const uint4*)(sm + s_off + rr * 8192 + 16 * (it & 1)), ysum[rr]);
            }
        }
    };
    // ld: chunk c's y bytes (N rows x 128 bytes of this CTA's slice) into ring slot c % RING_S
    const uint4* slice = src + (long long)blockIdx.x * slice_chunks * N * 8;
    auto issue = [&](int c) {
#pragma unroll
        for (int rr = 0; rr < RH; ++rr)
            lb_cp16((u32*)(sm + R_OFF + (c % RING_S) * 16384 + (s_off - B_OFF) + rr * 8192),
                    slice + (long long)(c % slice_chunks) * N * 8 + (r0 + 64 * rr) * 8 + ck, 16);
        lb_commit();
    };
    __shared__ __align__(8) u64 full[MB_S], empty[MB_S];
    if (SYNC == MBAR) {
        if (tid < MB_S) {
            lb_mbar_init(&full[tid], blockDim.x / 32);
            lb_mbar_init(&empty[tid], blockDim.x / 32);
        }
        __syncthreads();
        for (int c = 0; c < 2; ++c) {
            __syncwarp();
            if (lane == 0) lb_mbar_arrive(&full[c]);
        }
    }
    if (SYNC == SPEC) {
        if (tid < RING_S) {
            lb_mbar_init(&full[tid], 32);         // the producer's lanes, as their copies land
            lb_mbar_init(&empty[tid], 4 * 4);     // the 16 mma warps
        }
        __syncthreads();
        if (tid >= 512) {  // the producer warp
            for (int c = 0; c < iters; ++c) {
                const int sl = c % RING_S;
                if (c >= RING_S) lb_mbar_wait(&empty[sl], (c / RING_S - 1) & 1);
                const uint4* from = slice + (long long)(c % slice_chunks) * N * 8;
                unsigned char* to = sm + R_OFF + sl * 16384;
#pragma unroll 8
                for (int i = lane; i < N * 8; i += 32) {
                    const int r = i >> 3, q = i & 7;
                    lb_cp16((u32*)(to + r * 128 + ((q ^ (r & 7)) << 4)), from + i, 16);
                }
                asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(
                                 lb_smem(&full[sl]))
                             : "memory");
            }
            lb_wait<0>();
            return;
        }
    }
    auto chunk = [&](int it, u32(&r)[16]) {
        if (SYNC > 0 && it % SYNC == 0) __syncthreads();
        if (LD > 0 && SYNC != SPEC) {
            lb_wait<RING_S - 3>();
            if (LD == 1) lb_fence_async_smem();
            __syncthreads();
            issue(it + RING_S - 2);
        }
        if (SYNC == MBAR) lb_mbar_wait(&full[it % MB_S], (it / MB_S) & 1);
        if (SYNC == SPEC) {
            lb_mbar_wait(&full[it % RING_S], (it / RING_S) & 1);
            if (LD == 3) lb_fence_async_smem();
        }
        fill(it, r);
        lb_wg_fence();
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            if constexpr (SS) {
                static_assert(N == 128, "SS: n128 only");
                lb_wgmma<false>(d, da + 2 * s, db + 2 * s, 1);
            } else {
                lb_wgmma_rs<false, N, F == T2U>(d, r[4 * s], r[4 * s + 1], r[4 * s + 2],
                                                r[4 * s + 3], db + 2 * s, 1);
            }
        }
        lb_wg_commit();
        lb_wg_wait<1>();
        if (SYNC == MBAR) {
            if (it >= 1) {
                __syncwarp();
                if (lane == 0) lb_mbar_arrive(&empty[(it - 1) % MB_S]);
            }
            const int j = it + MB_S - 2;  // the slot a load would refill
            if (j >= MB_S) lb_mbar_wait(&empty[j % MB_S], (j / MB_S - 1) & 1);
            lb_fence_async_smem();
            __syncwarp();
            if (lane == 0) lb_mbar_arrive(&full[(it + 2) % MB_S]);
        }
        if (SYNC == SPEC && it >= 1) {
            __syncwarp();
            if (lane == 0) lb_mbar_arrive(&empty[(it - 1) % RING_S]);
        }
    };
    // Loaded, not constants: constant A operands are rematerialized into scratch registers
    // per wgmma, and ptxas then serializes the wgmmas (C7512).
    u32 a0[16], a1[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        a0[i] = W[frag + i * LDW];
        a1[i] = W[frag + 1 + i * LDW];
    }
    if (LD > 0 && SYNC != SPEC)
        for (int c = 0; c < RING_S - 2; ++c) issue(c);
    const long long c0 = clock64();
    for (int it = 0; it < iters; it += 2) {
        chunk(it, a0);
        chunk(it + 1, a1);
    }
    lb_wg_wait<0>();
    lb_wait<0>();
    const long long c1 = clock64();
    int s = 0;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) s += d[i];
#pragma unroll
    for (int rr = 0; rr < RH; ++rr) s += ysum[rr];
    if (s == 0x7fffffff) sink[0] = s;  // keeps every accumulator live
    if (tid == 0) cycles[blockIdx.x] = c1 - c0;
}

#ifndef __CUDACC_RTC__
#include "probe_host.h"

// ld variants: each CTA's slice of y, 2 MB (past the L2 in all: every copy reads DRAM).
constexpr long long SLICE_BYTES = 2 << 20;
const uint4* g_src = nullptr;

template <int N, bool SS, int F, int SYNC, int LD = 0>
void run(const char* name, int wgs, int sms, int* sink, long long* cycles) {
    CK(cudaFuncSetAttribute(wg_rate<N, SS, F, SYNC, LD>,
                            cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    const int iters = 4096;
    const int slice_chunks = (int)(SLICE_BYTES / (N * 128));
    const int threads = 128 * wgs + (SYNC == SPEC ? 32 : 0);
    // (a short warm-up launch, then 5 timed ones)
    const float ms_med = probe_median_ms(5, [&](int rep) {
        wg_rate<N, SS, F, SYNC, LD><<<sms, threads, SMEM>>>(rep == 0 ? 64 : iters, sink, cycles,
                                                            g_src, slice_chunks);
    });
    std::vector<long long> cyc(sms);
    CK(cudaMemcpy(cyc.data(), cycles, sms * sizeof(long long), cudaMemcpyDeviceToHost));
    std::sort(cyc.begin(), cyc.end());
    const double ops = 2.0 * 64 * N * 128 * wgs * (double)iters * sms;  // 128 k per chunk
    const double tops = ops / (ms_med * 1e-3) / 1e12;
    const double cpc = (double)cyc[sms / 2] / iters;  // SM cycles per chunk (median SM)
    const double floor_cpc = 64.0 * N * 128 * wgs / 4096.0;  // 4096 int8 MAC per SM cycle
    std::printf("%-44s %2d wg  %7.3f ms  %6.0f TOPS  %7.1f cycles/chunk (dense floor %5.0f, %4.0f%%)",
                name, wgs, ms_med, tops, cpc, floor_cpc, 100.0 * floor_cpc / cpc);
    if (LD > 0)  // y bytes streamed: N rows x 128 bytes per chunk
        std::printf("  y %5.2f TB/s", (double)N * 128 * iters * sms / (ms_med * 1e-3) / 1e12);
    std::printf("\n");
}

int main() {
    const int sms = probe_device("");
    int* sink;
    long long* cycles;
    CK(cudaMalloc(&sink, 4));
    CK(cudaMalloc(&cycles, sms * sizeof(long long)));
    {
        void* src;
        CK(cudaMalloc(&src, SLICE_BYTES * sms));
        CK(cudaMemset(src, 1, SLICE_BYTES * sms));
        g_src = (const uint4*)src;
    }
    run<128, true, CONST, 0>("SS n128 (A and B from smem)", 4, sms, sink, cycles);
    run<128, true, CONST, 0>("SS n128", 2, sms, sink, cycles);
    run<128, false, CONST, 0>("RS n128, A registers fixed", 4, sms, sink, cycles);
    run<128, false, CONST, 1>("RS n128, fixed, sync every chunk", 4, sms, sink, cycles);
    run<128, false, I8X4, 1>("RS n128, i8x4 frags, sync every chunk", 4, sms, sink, cycles);
    run<128, false, T2, 1>("RS n128, t2 expanded, sync every chunk", 4, sms, sink, cycles);
    run<128, false, T2U, 1>("RS n128, t2 u8 fields + row sums, sync", 4, sms, sink, cycles);
    run<64, false, CONST, 0>("RS n64, A registers fixed", 4, sms, sink, cycles);
    run<64, false, T2, 2>("RS n64, t2 expanded, sync every 2", 4, sms, sink, cycles);
    run<64, false, T2U, 2>("RS n64, t2 u8 fields + row sums, sync 2", 4, sms, sink, cycles);
    run<64, false, T2, 0>("RS n64, t2 expanded, no sync", 4, sms, sink, cycles);
    run<64, false, T2, MBAR>("RS n64, t2 expanded, mbarrier handover", 4, sms, sink, cycles);
    run<128, false, T2, MBAR>("RS n128, t2 expanded, mbarrier handover", 4, sms, sink, cycles);
    run<128, false, T2, 0, 1>("RS n128, t2, y ring from DRAM, fence", 4, sms, sink, cycles);
    run<128, false, T2, 0, 2>("RS n128, t2, y ring from DRAM, no fence", 4, sms, sink, cycles);
    run<64, false, T2, 0, 1>("RS n64, t2, y ring from DRAM, fence", 4, sms, sink, cycles);
    run<64, false, T2, 0, 2>("RS n64, t2, y ring from DRAM, no fence", 4, sms, sink, cycles);
    // (at n128 the 17th warp caps the mma warps' registers at 96 and ptxas serializes the
    // wgmma, C7512: n64 is the fair comparison)
    run<64, false, T2, SPEC, 3>("RS n64, t2, producer warp, fence", 4, sms, sink, cycles);
    run<64, false, T2, SPEC, 4>("RS n64, t2, producer warp, no fence", 4, sms, sink, cycles);
    run<128, false, T2, SPEC, 3>("RS n128, t2, producer warp, fence", 4, sms, sink, cycles);
    run<128, false, T2, SPEC, 4>("RS n128, t2, producer warp, no fence", 4, sms, sink, cycles);
    run<128, false, T2U, SPEC, 3>("RS n128, t2u, producer warp, fence", 4, sms, sink, cycles);
    run<128, false, T2U, 0, 1>("RS n128, t2u, y ring from DRAM, fence", 4, sms, sink, cycles);
    run<128, false, I8X4, 0>("RS n128, i8x4 frags, no sync", 4, sms, sink, cycles);
    run<128, false, T2, 0>("RS n128, t2 expanded, no sync", 4, sms, sink, cycles);
    return 0;
}
#endif
