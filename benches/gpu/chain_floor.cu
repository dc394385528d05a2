// chain_floor.cu — how fast can a chain of dependent small-M kernels stream their weights?
// `lowbit bench` times M <= 16 as a CUDA graph of 8 dependent launches over 8 weight copies
// (8.39 MB each, from DRAM), under programmatic dependent launch (PDL): each kernel may
// prefetch its weights into the L2 before `griddepcontrol.wait`, and reads them after it. Its
// weight-stream floor (`stream_read`, microbench.cu) reaches only ~70 % of the copy bandwidth
// that way. This probe asks what the chain's floor is made of, with no math: the prefetch
// (none, per 128-byte line, one bulk prefetch per row or per block), where the next kernel is
// let in (after the wait, or at entry), reading before the wait (not legal for a real op; the
// bound), the blocks per SM, and a 2.1 MB output written after the reads (what the low-rank
// projection stores at M = 16, f32).
//
// Build and run on the GPU machine, from the project root (`bash benches/gpu/sweep.sh
// chainfloor` does both):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/chain_floor \
//       benches/gpu/chain_floor.cu && /tmp/chain_floor
//
// Glossary
//   share   a block's contiguous run of the weight buffer (layout 0), or (layout 1) the
//           low-rank kernel's tile: head x / 32, 256 columns of each of the 64 k-word rows of
//           that head (rows 32 KB apart), as lowrank_mma_small's CTA reads it; (layout 2)
//           the small-M decoder's: 256 blocks, 32 columns (128 bytes) of 256 k-word rows of
//           the [8192][256] weight words (rows 1 KB apart)
//   PF      0 none; 1 prefetch.global.L2 per 128-byte line; 2 cp.async.bulk.prefetch.L2 per
//           row of the tile (1 KB; layout 1) or per 4 KB piece (layout 0); 3 per line with
//           the L2::evict_last hint; 4 as 2 with an evict_last cache policy
//   TRIG    0 the next kernel is let in after this one's wait (the kernels' default); 1 at
//           entry, before the prefetch
//   BEFORE  the loads are issued before the wait (a bound only)
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                              \
        }                                                                              \
    } while (0)

typedef unsigned int u32;
constexpr long long W_BYTES = 4LL * 256 * 8192;  // H x D x N int8 weights: 8.39 MB
constexpr int COPIES = 8, REPLAYS = 4, SAMPLES = 25;

struct Args {
    const uint4* w;
    uint4* out;
    long long out16;  // 16-byte words of output written per launch (0: none)
    u32* sink;
    int layout;
};

__device__ __forceinline__ void pf_line(const void* p, int pf) {
    if (pf == 3)
        asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p));
    else
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void pf_bulk(const void* p, u32 bytes, bool last) {
    if (last) {
        unsigned long long pol;
        asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
        asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(p),
                     "r"(bytes), "l"(pol)
                     : "memory");
    } else {
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
    }
}

// Word q (16-byte units) of this block's share, and the share's length.
__device__ __forceinline__ const uint4* at(const Args& a, long long q) {
    if (a.layout == 0) return a.w + q;
    if (a.layout == 2) {
        const long long ct = blockIdx.x % 8, ks = blockIdx.x / 8;
        return a.w + (ks * 256 + q / 8) * 64 + ct * 8 + q % 8;  // 8 x 16 B of each 1 KB row
    }
    const long long head = blockIdx.x / 32, tile = blockIdx.x % 32;
    const long long row = q / 64, c = q % 64;  // 64 x 16 B = 1 KB of each row
    return a.w + head * (64LL * 8192 / 4) + row * (8192 / 4) + tile * 64 + c;
}

template <int PF, int TRIG, bool BEFORE, bool PDL>
__global__ void __launch_bounds__(256) chain(Args a) {
    const int tid = threadIdx.x;
    long long q0, n;
    if (a.layout == 0) {
        const long long n16 = W_BYTES / 16, per = (n16 + gridDim.x - 1) / gridDim.x;
        q0 = min(n16, blockIdx.x * per);
        n = min(n16, q0 + per) - q0;
    } else {
        q0 = 0;
        n = a.layout == 1 ? 64 * 64 : 256 * 8;  // 64 rows x 1 KB, 256 rows x 128 B
    }
    if (PDL && TRIG == 1) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (PF == 1 || PF == 3) {
        for (long long i = tid; i < n / 8; i += blockDim.x) pf_line(a.layout == 0 ? at(a, q0) + 8 * i : at(a, 8 * i), PF);
    } else if (PF == 2 || PF == 4) {
        if (a.layout == 0) {
            for (long long i = tid; i * 256 < n; i += blockDim.x)
                pf_bulk(at(a, q0) + 256 * i, (u32)(min(256LL, n - 256 * i) * 16), PF == 4);
        } else if (a.layout == 1) {
            for (int r = tid; r < 64; r += blockDim.x) pf_bulk(at(a, 64 * r), 1024, PF == 4);
        } else {
            for (int r = tid; r < 256; r += blockDim.x) pf_bulk(at(a, 8 * r), 128, PF == 4);
        }
    }
    u32 x = 0;
    uint4 v[16];
    const int per_t = (int)((n + blockDim.x - 1) / blockDim.x);  // <= 16 for the grids used
    if (BEFORE) {
#pragma unroll
        for (int u = 0; u < 16; ++u) {
            const long long q = tid + (long long)u * blockDim.x;
            v[u] = u < per_t && q < n ? __ldg(a.layout == 0 ? at(a, q0 + q) : at(a, q)) : make_uint4(0, 0, 0, 0);
        }
    }
    if (PDL) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        if (TRIG == 0) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
    if (!BEFORE) {
#pragma unroll
        for (int u = 0; u < 16; ++u) {
            const long long q = tid + (long long)u * blockDim.x;
            v[u] = u < per_t && q < n ? __ldg(a.layout == 0 ? at(a, q0 + q) : at(a, q)) : make_uint4(0, 0, 0, 0);
        }
    }
#pragma unroll
    for (int u = 0; u < 16; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    if (a.out16 > 0) {
        const long long per = (a.out16 + gridDim.x - 1) / gridDim.x, o0 = blockIdx.x * per;
        const long long o1 = min(a.out16, o0 + per);
        for (long long o = o0 + tid; o < o1; o += blockDim.x) a.out[o] = make_uint4(x, (u32)o, 1, 2);
    }
    for (int o = 16; o > 0; o >>= 1) x ^= __shfl_xor_sync(0xffffffffu, x, o);
    if ((tid & 31) == 0) a.sink[blockIdx.x * 8 + tid / 32] = x;
}

typedef void (*Kern)(Args);

struct Cfg {
    const char* name;
    Kern k;
    bool pdl;
};

static float run(Kern k, bool pdl, int blocks, int layout, long long out_bytes,
                 std::vector<uint4*>& w, uint4* out, u32* sink, uint4* flush, cudaStream_t s) {
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < COPIES; ++i) {
        Args a{w[i], out, out_bytes / 16, sink, layout};
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks);
        cfg.blockDim = dim3(256);
        cfg.stream = s;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = pdl ? 1 : 0;
        CK(cudaLaunchKernelEx(&cfg, k, a));
    }
    CK(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t ge;
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ts;
    for (int r = 0; r < SAMPLES + 2; ++r) {
        CK(cudaMemsetAsync(flush, r, 256 << 20, s));  // cold L2 before each sample
        CK(cudaEventRecord(e0, s));
        for (int i = 0; i < REPLAYS; ++i) CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 2) ts.push_back(ms * 1000.0f / (REPLAYS * COPIES));
    }
    std::sort(ts.begin(), ts.end());
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return ts[ts.size() / 2];
}

int main() {
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<uint4*> w(COPIES);
    for (auto& p : w) {
        CK(cudaMalloc(&p, W_BYTES));
        CK(cudaMemset(p, 0x5a, W_BYTES));
    }
    uint4 *out, *flush;
    u32* sink;
    CK(cudaMalloc(&out, 4 << 20));
    CK(cudaMalloc(&flush, 256 << 20));
    CK(cudaMalloc(&sink, 64 * 8 * 256 * 4));
    // Copy bandwidth as lowbit measures it (bytes read + written), for the % column.
    {
        uint4 *a, *b;
        const long long n = 1LL << 30;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<float> ts;
        for (int r = 0; r < 7; ++r) {
            CK(cudaEventRecord(e0, s));
            CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            ts.push_back(ms);
        }
        std::sort(ts.begin(), ts.end());
        std::printf("memcpy d2d 1 GiB: %.1f GB/s (read + write)\n", 2.0 * n / (ts[3] * 1e6));
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    const Cfg cfgs[] = {
        {"no PDL, no prefetch", chain<0, 0, false, false>, false},
        {"PDL, no prefetch", chain<0, 0, false, true>, true},
        {"PDL, line prefetch (stream_read)", chain<1, 0, false, true>, true},
        {"PDL, bulk prefetch", chain<2, 0, false, true>, true},
        {"PDL, line prefetch evict_last", chain<3, 0, false, true>, true},
        {"PDL, bulk prefetch evict_last", chain<4, 0, false, true>, true},
        {"PDL, line prefetch, next let in at entry", chain<1, 1, false, true>, true},
        {"PDL, bulk prefetch, next let in at entry", chain<2, 1, false, true>, true},
        {"PDL, loads before the wait (bound)", chain<0, 0, true, true>, true},
        {"PDL, loads before the wait, next at entry (bound)", chain<0, 1, true, true>, true},
    };
    for (long long ob : {0LL, 16LL * 32768 * 4}) {
        for (int layout : {0, 1, 2}) {
            for (int bps : {1, 2, 4}) {
                const int blocks = layout == 1 ? 128 : layout == 2 ? 256 : bps * sms;
                if (layout != 0 && bps > 1) continue;
                // layout 0 shares must fit 16 x 256 x 16 B per block
                if (layout == 0 && W_BYTES / 16 / blocks > 16 * 256) continue;
                for (const Cfg& c : cfgs) {
                    const float us = run(c.k, c.pdl, blocks, layout, ob, w, out, sink, flush, s);
                    std::printf("out %4.1f MB | %-14s | %3d blocks | %-50s | %6.2f us | %6.0f GB/s\n",
                                ob / 1e6, layout == 1 ? "low-rank tiles" : layout == 2 ? "decoder tiles" : "contiguous", blocks, c.name, us,
                                W_BYTES / (us * 1e3));
                }
            }
        }
    }
    CK(cudaDeviceSynchronize());
    return 0;
}
