// dram_rate.cu — how fast can `decoder_wgmma`'s CTAs stream y from DRAM into a shared-memory
// ring, by each way Hopper has to copy global memory to shared memory? No math: each CTA
// waits for each chunk, touches one word of it and hands the slot back, so the rate printed
// is the loads' own. The geometry is the decoder's at M = 2048 (D = 256, H = 4, N = 8192):
// y is 2048 rows of 32 KB, 128 CTAs = 16 row tiles x 8 K splits, each CTA 32 chunks of 128
// rows x 128 bytes (16 KB) from its 4 KB of each of its rows.
//
// Build and run on the GPU machine (sm_90a), from the project root:
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/dram_rate \
//       benches/gpu/dram_rate.cu && /tmp/dram_rate
// (`bash benches/gpu/sweep.sh dramrate` does both.)
//
// Glossary
//   CP     16-byte cp.async by all 512 threads (2 per thread per 16 KB), a commit group per
//          chunk, cp.async.wait_group + __syncthreads per chunk: decoder_wgmma's block ring
//   BULK   cp.async.bulk of each row's SEG bytes, issued by the 32 lanes of warp 0, completing
//          on the slot's mbarrier (expect_tx by lane 0 first)
//   TMA    cp.async.bulk.tensor.2d, one 128-row x 128-byte box per chunk (128-byte swizzle,
//          the ring's layout), issued by thread 0
//   rows   the decoder's pattern (SEG bytes of each of 128 rows, 32 KB apart); contig: the
//          same bytes per CTA as one contiguous run (the bound with no row pattern)
//   SLOTS  ring slots = chunks in flight; SEG 256: two 128-byte chunks per row per slot
//   y rate bytes of y read / event time; every launch reads a slice of y last read 3 launches
//          (200 MB) before, so from DRAM (the H200's L2 is 50 MB)

#define LB_WGMMA 1
#include "../../cuda/common.cuh"
#include "../../cuda/mma.cuh"

enum Mode { CP = 0, BULK = 1, TMA = 2 };
constexpr int ROWS = 2048, ROW_BYTES = 32768, TILE = 128, SPLITS = 8;
constexpr int SPLIT_BYTES = ROW_BYTES / SPLITS;  // 4 KB of each row per CTA
constexpr int CTAS = ROWS / TILE * SPLITS;
constexpr long long Y_BYTES = (long long)ROWS * ROW_BYTES;
constexpr int SLICES = 4;

__device__ __forceinline__ void tma_2d(void* dst, const LbTmap* map, int c0, int c1, u64* bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(lb_smem(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(lb_smem(bar))
        : "memory");
}

// SEG bytes of each of the tile's 128 rows per chunk (16 KB at SEG 128); `contig` reads the
// same bytes per chunk as one run of the CTA's own region instead.
template <int MODE, int SLOTS, int SEG, bool CONTIG>
__global__ void __launch_bounds__(512, 1)
    ring_read(const unsigned char* y, int* sink, const __grid_constant__ LbTmap tmap, int row0) {
    constexpr int CH = TILE * SEG, CHUNKS = SPLIT_BYTES / SEG;
    extern __shared__ __align__(1024) unsigned char raw[];
    unsigned char* sm = raw + ((1024u - (lb_smem(raw) & 1023u)) & 1023u);
    __shared__ __align__(8) u64 full[SLOTS];
    const int tid = threadIdx.x, lane = tid & 31;
    const int rt = blockIdx.x / SPLITS, sp = blockIdx.x % SPLITS;
    const int r_first = row0 + rt * TILE, k0 = sp * SPLIT_BYTES;
    const unsigned char* region = y + (long long)row0 * ROW_BYTES + (long long)blockIdx.x * CHUNKS * CH;
    if (tid < SLOTS) lb_mbar_init(&full[tid], 1);
    __syncthreads();
    auto issue = [&](int c) {
        if (c >= CHUNKS) {
            if (MODE == CP) lb_commit();
            return;
        }
        unsigned char* slot = sm + (c % SLOTS) * CH;
        if (MODE == CP) {
#pragma unroll
            for (int j = 0; j < CH / 16 / 512; ++j) {
                const int i = tid + 512 * j;
                const int r = i / (SEG / 16), q = i % (SEG / 16);
                const unsigned char* src =
                    CONTIG ? region + (long long)c * CH + 16 * i
                           : y + (long long)(r_first + r) * ROW_BYTES + k0 + c * SEG + 16 * q;
                lb_cp16((u32*)(slot + r * SEG + 16 * (q ^ (r & 7))), src, 16);
            }
            lb_commit();
        } else if (MODE == BULK) {
            if (tid < 32) {
                if (lane == 0) lb_mbar_expect(&full[c % SLOTS], CH);
                __syncwarp();
                if (CONTIG) {
                    if (lane == 0) lb_bulk(slot, region + (long long)c * CH, CH, &full[c % SLOTS]);
                } else {
#pragma unroll
                    for (int r = lane; r < TILE; r += 32)
                        lb_bulk(slot + r * SEG, y + (long long)(r_first + r) * ROW_BYTES + k0 + c * SEG,
                                SEG, &full[c % SLOTS]);
                }
            }
        } else if (tid == 0) {
            lb_mbar_expect(&full[c % SLOTS], CH);
            tma_2d(slot, &tmap, k0 + c * SEG, r_first, &full[c % SLOTS]);
        }
    };
#pragma unroll
    for (int c = 0; c < SLOTS; ++c) issue(c);
    int acc = 0;
    for (int c = 0; c < CHUNKS; ++c) {
        if (MODE == CP) {
            lb_wait<SLOTS - 1>();
        } else {
            lb_mbar_wait(&full[c % SLOTS], (c / SLOTS) & 1);
        }
        __syncthreads();
        acc += ((const int*)(sm + (c % SLOTS) * CH))[tid];
        __syncthreads();
        issue(c + SLOTS);
    }
    if (acc == 0x7fffffff) *sink = acc;
}

// The bound without a ring: 16-byte loads into registers, 4 in flight per thread, grid-stride.
__global__ void __launch_bounds__(256) plain_read(const uint4* y, long long n16, int* sink) {
    u32 acc = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = __ldcs(y + i + j * stride);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
    }
    for (; i < n16; i += stride) acc ^= y[i].x;
    if (acc == 0x7fffffffu) *sink = (int)acc;
}

#ifndef __CUDACC_RTC__
#include <cuda.h>
#include "probe_host.h"

static unsigned char* g_y = nullptr;
static int* g_sink = nullptr;
static LbTmap g_tmap;

// Median µs of 9 launches, each on slice rep % SLICES (the warm-up on slice 0).
template <typename Launch>
static float median_us(Launch launch) {
    return 1000.0f * probe_median_ms(9, [&](int rep) { launch(rep % SLICES); });
}

static void report(const char* name, float us, double bytes) {
    std::printf("%-40s %8.2f us  %5.2f TB/s\n", name, us, bytes / (us * 1e-6) / 1e12);
}

template <int MODE, int SLOTS, int SEG, bool CONTIG>
static void run(const char* name) {
    const int smem = SLOTS * TILE * SEG + 1024;
    auto k = ring_read<MODE, SLOTS, SEG, CONTIG>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const float us = median_us([&](int s) { k<<<CTAS, 512, smem>>>(g_y, g_sink, g_tmap, s * ROWS); });
    char label[96];
    std::snprintf(label, sizeof label, "%s, %d slots, %d B/row", name, SLOTS, SEG);
    report(label, us, (double)Y_BYTES);
}

int main() {
    char what[96];
    std::snprintf(what, sizeof what, "; y %d x %d bytes, %d CTAs of 512 threads", ROWS, ROW_BYTES,
                  CTAS);
    const int sms = probe_device(what);
    CK(cudaMalloc(&g_y, Y_BYTES * SLICES));
    CK(cudaMemset(g_y, 1, Y_BYTES * SLICES));
    CK(cudaMalloc(&g_sink, 4));

    // y's tensor map: [SLICES * ROWS][ROW_BYTES] bytes, boxes of 128 bytes x 128 rows.
    {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult q;
        CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
        using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                    const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                    const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                    CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
        const cuuint64_t dims[2] = {(cuuint64_t)ROW_BYTES, (cuuint64_t)ROWS * SLICES};
        const cuuint64_t strides[1] = {(cuuint64_t)ROW_BYTES};
        const cuuint32_t box[2] = {128, TILE}, estr[2] = {1, 1};
        CUtensorMap m;
        const CUresult r = ((Encode)fn)(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, g_y, dims, strides,
                                        box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        if (r != CUDA_SUCCESS) {
            std::printf("cuTensorMapEncodeTiled: %d\n", (int)r);
            return 1;
        }
        static_assert(sizeof(CUtensorMap) == sizeof(LbTmap), "tensor map size");
        std::memcpy(&g_tmap, &m, sizeof m);
    }

    {
        const float us = median_us([&](int s) {
            CK(cudaMemcpyAsync(g_y + (long long)((s + 1) % SLICES) * Y_BYTES,
                               g_y + (long long)s * Y_BYTES, Y_BYTES / 2, cudaMemcpyDeviceToDevice));
        });
        report("cudaMemcpy D2D (read + write bytes)", us, (double)Y_BYTES);
        for (int per_sm : {4, 8}) {
            const float us2 = median_us([&](int s) {
                plain_read<<<sms * per_sm, 256>>>((const uint4*)(g_y + (long long)s * Y_BYTES),
                                                  Y_BYTES / 16, g_sink);
            });
            char label[64];
            std::snprintf(label, sizeof label, "plain 16-byte loads, %d blocks/SM", per_sm);
            report(label, us2, (double)Y_BYTES);
        }
    }
    run<CP, 4, 128, false>("CP rows");
    run<CP, 6, 128, false>("CP rows");
    run<CP, 8, 128, false>("CP rows");
    run<CP, 12, 128, false>("CP rows");
    run<CP, 4, 256, false>("CP rows");
    run<CP, 6, 256, false>("CP rows");
    run<CP, 8, 128, true>("CP contig");
    run<CP, 12, 128, true>("CP contig");
    run<BULK, 4, 128, false>("BULK rows");
    run<BULK, 8, 128, false>("BULK rows");
    run<BULK, 12, 128, false>("BULK rows");
    run<BULK, 6, 256, false>("BULK rows");
    run<BULK, 8, 128, true>("BULK contig");
    run<BULK, 12, 128, true>("BULK contig");
    run<TMA, 4, 128, false>("TMA rows");
    run<TMA, 8, 128, false>("TMA rows");
    run<TMA, 12, 128, false>("TMA rows");
    return 0;
}
#endif
