// common.cuh — helpers prepended (by the Rust loader) to every cuda/*.cu source.
//
// Glossary
//   word      u32 holding four int8 lanes; byte j = element 4k+j of the packed axis (dp4a order)
//   K / Kw    reduction length in elements / in words (Kw = ceil(K/4))
//   A         activations, one row per (batch, head, token); B: packed weight words [Kw, ncols]
//   mode      how A arrives: LB_A_PACKED (signed words), LB_A_CODES (i32 codes), LB_A_F32
//             (floats quantized on load with the per-tensor scale)
//   fmt       activation format: 0 int8 (qmax 127), 1 int4 (qmax 7), 2 uint8pos (qmax 255)
//   UNS       A lanes are unsigned bytes (uint8pos): dp4a.u32.s32, never a signed lane
//   split     a slice of the K range handled by one block (decoder split-K); partials are
//             i32 and summed in a fixed order, so results are the same bits run to run
//
// Numerics (SPEC.md): round half away from zero (roundf), IEEE division (__fdiv_rn),
// out = (acc * w_scale) * a_scale with explicit round-to-nearest multiplies (no contraction).
//
// Tuning constants arrive as -D defines from Rust (src/backend/cuda/tuning.rs); the defaults
// below only let a file compile on its own.

typedef unsigned int u32;
typedef unsigned long long u64;

#define LB_A_PACKED 0
#define LB_A_CODES 1
#define LB_A_F32 2

#define LB_FMT_INT8 0
#define LB_FMT_INT4 1
#define LB_FMT_U8POS 2

#ifndef LB_EPS
#define LB_EPS 1.0e-8f
#endif

// ---- dot products -------------------------------------------------------------------------

template <bool UNS>
__device__ __forceinline__ int dot4(u32 a, u32 b, int c);

template <>
__device__ __forceinline__ int dot4<false>(u32 a, u32 b, int c) {
    return __dp4a((int)a, (int)b, c);
}

// Unsigned activation lanes x signed weight lanes (uint8pos codes up to 255).
template <>
__device__ __forceinline__ int dot4<true>(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// ---- quantization -------------------------------------------------------------------------

__device__ __forceinline__ float lb_qmax(int fmt) {
    return fmt == LB_FMT_INT8 ? 127.0f : (fmt == LB_FMT_INT4 ? 7.0f : 255.0f);
}

// clamp(round(x/s), -q, q), or clamp(round(max(x,0)/s), 0, 255) for uint8pos.
__device__ __forceinline__ int lb_code(float x, float s, int fmt) {
    float lo, hi;
    if (fmt == LB_FMT_U8POS) {
        x = fmaxf(x, 0.0f);
        lo = 0.0f;
        hi = 255.0f;
    } else {
        hi = lb_qmax(fmt);
        lo = -hi;
    }
    float q = roundf(__fdiv_rn(x, s));
    return (int)fminf(fmaxf(q, lo), hi);
}

// Byte j of the word = lane j.
__device__ __forceinline__ u32 lb_pack4(int c0, int c1, int c2, int c3) {
    return (u32)(c0 & 0xff) | ((u32)(c1 & 0xff) << 8) | ((u32)(c2 & 0xff) << 16) |
           ((u32)(c3 & 0xff) << 24);
}

// The activation scale: a device buffer when given, else the by-value parameter. A coherent
// load (ld.global.cg), never __ldg: the buffer may be written by the previous kernel of a PDL
// chain (absmean_scale, mma_prep_scale_a), and ptxas moves read-only ld.global.nc loads above
// griddepcontrol.wait (seen in lowrank_wgmma's SASS, NVRTC 13.0), where .cg ones stay after it.
__device__ __forceinline__ float lb_scale(const float* scale_ptr, float scale_param) {
    return scale_ptr != nullptr ? __ldcg(scale_ptr) : scale_param;
}

// ---- absmean scale (absmean_scale in quantize.cu, mma_prep_scale_a) ------------------------
// |x|, or max(x, 0) for uint8pos, widened for the f64 sum.
__device__ __forceinline__ double lb_abs_term(float v, bool pos) {
    return (double)(pos ? fmaxf(v, 0.0f) : fabsf(v));
}

// The last levels of lb_block_sum's tree inside warp 0: lane l < w adds lane l + w's value,
// w = 16, 8, .., 1, as red[l] += red[l + w] would (the same operands: the same bits). Lane 0
// ends with the sum of lanes 0..31; the other lanes' values are not used.
__device__ __forceinline__ double lb_warp_tree(double v) {
#pragma unroll
    for (int w = 16; w > 0; w >>= 1) v += __shfl_down_sync(0xffffffffu, v, w);
    return v;
}
// lb_warp_tree over warp 0's `v` (other threads' are ignored), returned to every thread
// through red[0], which is free again on return.
__device__ __forceinline__ double lb_warp0_total(double v, double* red) {
    if (threadIdx.x < 32) {
        v = lb_warp_tree(v);
        __syncwarp();
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    const double r = red[0];
    __syncthreads();
    return r;
}

// Sum of each thread's `v` over the block in a fixed tree (the same bits on every run),
// returned to every thread: level w = blockDim.x / 2, .., 1 adds red[l + w] into red[l] for l
// < w, the levels below 32 in warp 0's registers (lb_warp0_total). blockDim.x is a power of
// two, at least 32; `red` holds blockDim.x doubles and is free again on return.
__device__ __forceinline__ double lb_block_sum(double v, double* red) {
    const int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w >= 32; w >>= 1) {
        if (tid < w) red[tid] += red[tid + w];
        __syncthreads();
    }
    return lb_warp0_total(tid < 32 ? red[tid] : 0.0, red);
}

// SPEC.md: max(max(2 * mean, EPS) / qmax, EPS), mean = sum / n rounded to f32.
__device__ __forceinline__ float lb_absmean_scale(double sum, long long n, int fmt) {
    const float mean = (float)(sum / (double)n);
    return fmaxf(__fdiv_rn(fmaxf(2.0f * mean, LB_EPS), lb_qmax(fmt)), LB_EPS);
}

// One thread's strided run of absmean_scale's sum (quantize.cu) over x (n f32) from element
// `first` on: float4s (n4 of them, lb_absmean_n4), then the tail. Coherent loads
// (ld.global.cg), which stay after griddepcontrol.wait (see lb_scale).
__device__ __forceinline__ double lb_absmean_run(const float* x, long long n, long long n4,
                                                 long long stride, long long first, bool pos) {
    double sum = 0.0;
    for (long long i = first; i < n4; i += stride) {
        const float4 v = __ldcg((const float4*)x + i);
        sum += lb_abs_term(v.x, pos);
        sum += lb_abs_term(v.y, pos);
        sum += lb_abs_term(v.z, pos);
        sum += lb_abs_term(v.w, pos);
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) sum += lb_abs_term(__ldcg(x + i), pos);
    return sum;
}

// x's float4 count for lb_absmean_run: n / 4 where x is 16-byte aligned, else none.
__device__ __forceinline__ long long lb_absmean_n4(const float* x, long long n) {
    return ((unsigned long long)x & 15) == 0 ? n / 4 : 0;
}

// Block b's partial of absmean_scale on a grid of `blocks` blocks of this block's size:
// each thread's run and lb_block_sum's tree, returned to every thread. `red` holds
// blockDim.x doubles.
__device__ __forceinline__ double lb_absmean_block(const float* x, long long n, int fmt, int b,
                                                   int blocks, double* red) {
    const long long stride = (long long)blocks * blockDim.x;
    const long long first = b * (long long)blockDim.x + threadIdx.x;
    const double sum = lb_absmean_run(x, n, lb_absmean_n4(x, n), stride, first,
                                      fmt == LB_FMT_U8POS);
    return lb_block_sum(sum, red);
}

// The absmean scale of all of x (n f32) worked out by one block, in the order absmean_scale
// (quantize.cu) sums it on a grid of `blocks` blocks of this block's size: per virtual block
// each thread's run (lb_absmean_run) and lb_block_sum's tree, as lb_absmean_block, then
// thread b sums block b's partial from 0.0 and the tree again. So every block of a small-M
// low-rank kernel (LB_MS_SCALE_BLOCKS, LB_SM_SCALE_BLOCKS:
// CudaDevice::with_small_inline_scale), and the two-kernel path, get the same bits. `red`
// holds blockDim.x doubles; blocks <= 32. In that second tree every value past thread `blocks` is
// +0.0 and the partials are sums of |x| (never -0.0), so the levels above 32 change nothing
// and it is warp 0's lb_warp_tree alone; with one block it is that block's sum.
__device__ __forceinline__ float lb_inline_absmean(const float* x, long long n, int fmt,
                                                   int blocks, double* red) {
    const int tid = threadIdx.x;
    const bool pos = fmt == LB_FMT_U8POS;
    const long long n4 = lb_absmean_n4(x, n);
    const long long stride = (long long)blocks * blockDim.x;
    double part = 0.0;
    for (int b = 0; b < blocks; ++b) {
        const long long first = b * (long long)blockDim.x + tid;
        double sum = lb_absmean_run(x, n, n4, stride, first, pos);
        sum = lb_block_sum(sum, red);
        if (blocks == 1) return lb_absmean_scale(sum, n, fmt);
        if (tid == b) part = sum;
    }
    double s = 0.0;
    if (tid < blocks) s += part;
    return lb_absmean_scale(lb_warp0_total(s, red), n, fmt);
}

// ---- grid barrier (sm_70+: every block of the grid resident at once) -----------------------
// *bar holds a generation (high 32 bits) and its arrivals (low 32), zero when first
// allocated. lb_grid_gen, at a block's entry, reads the generation (its round trip hidden
// behind the block's work: within a launch it moves only after every block has arrived).
// lb_grid_arrive: one thread per block adds its arrival with a release reduction, which
// publishes what the block wrote before it, and waits until it sees every block arrived or
// the generation move on. Block 0, once it has seen every block arrive, sets
// the arrivals back to 0 and moves to the next generation (release). The word thus returns
// to "no arrivals" within each launch: nothing depends on how many launches came before, so
// a captured CUDA graph's replays (whose kernel parameters are frozen) wait as its first
// launch did. Used by mma_prep_scale_a and the small-M decoder's grid scale.
#if __CUDA_ARCH__ >= 700
__device__ __forceinline__ unsigned lb_grid_gen(const unsigned long long* bar) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(bar) : "memory");
    return (unsigned)(v >> 32);
}
// `blocks`: the grid's blocks; `first`: this is its block 0.
__device__ __forceinline__ void lb_grid_arrive(unsigned long long* bar, unsigned gen,
                                               unsigned blocks, bool first) {
    asm volatile("red.release.gpu.global.add.u64 [%0], 1;" ::"l"(bar) : "memory");
    unsigned long long seen;
    do {
        asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(seen) : "l"(bar) : "memory");
    } while ((unsigned)(seen >> 32) == gen && (unsigned)seen != blocks);
    if (first)
        asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(bar),
                     "l"((unsigned long long)(gen + 1u) << 32)
                     : "memory");
}
#endif

// (acc * w_scale) * a_scale, each product rounded (never fused), then the optional ReLU.
__device__ __forceinline__ float lb_dequant(int acc, float w_scale, float a_scale, int relu) {
    float v = __fmul_rn(__fmul_rn((float)acc, w_scale), a_scale);
    return relu ? (v > 0.0f ? v : 0.0f) : v;  // ReLU: -0.0 and NaN give +0.0, as on the CPU
}

// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ unsigned short lb_bf16_bits(float v) {
    u32 b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((b >> 16) | 0x40u);
    return (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// f32 -> f16 bits, round to nearest even.
__device__ __forceinline__ unsigned short lb_f16_bits(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

// out[i] = v in the epilogue's dtype (0 f32, 1 f16, 2 bf16).
__device__ __forceinline__ void lb_store(void* out, long long i, float v, int dtype) {
    if (dtype == 0) {
        ((float*)out)[i] = v;
    } else {
        ((unsigned short*)out)[i] = dtype == 1 ? lb_f16_bits(v) : lb_bf16_bits(v);
    }
}

// Two outputs as f16x2 / bf16x2 bits (round to nearest even; `lo` in the low half).
__device__ __forceinline__ u32 lb_pack2(float lo, float hi, int dtype) {
#if __CUDA_ARCH__ >= 800
    u32 r;
    if (dtype == 1) {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
#else
    if (dtype == 1) return (u32)lb_f16_bits(lo) | ((u32)lb_f16_bits(hi) << 16);
    return (u32)lb_bf16_bits(lo) | ((u32)lb_bf16_bits(hi) << 16);
#endif
}

// Streams 4 consecutive outputs to element offset `o` of `out` (16-byte aligned for f32,
// 8-byte for 16-bit dtypes) as one store.
__device__ __forceinline__ void lb_stcs4(void* out, long long o, const float (&f)[4], int dtype) {
    if (dtype == 0) {
        __stcs((float4*)((float*)out + o), make_float4(f[0], f[1], f[2], f[3]));
    } else {
        __stcs((uint2*)((unsigned short*)out + o),
               make_uint2(lb_pack2(f[0], f[1], dtype), lb_pack2(f[2], f[3], dtype)));
    }
}

// ---- A words ------------------------------------------------------------------------------
// Word `kw` of one A row, whatever the mode. `row` points at the row's first element (word for
// LB_A_PACKED, code or float otherwise); `kvalid` is the row's valid length in the same unit
// (Kw words, or K elements). Out-of-range lanes are zero.

template <int MODE>
__device__ __forceinline__ u32 lb_a_word(const void* row, long kw, long kvalid, float s, int fmt);

template <>
__device__ __forceinline__ u32 lb_a_word<LB_A_PACKED>(const void* row, long kw, long kvalid,
                                                       float, int) {
    return kw < kvalid ? __ldg((const u32*)row + kw) : 0u;
}

template <>
__device__ __forceinline__ u32 lb_a_word<LB_A_CODES>(const void* row, long kw, long kvalid,
                                                      float, int) {
    const int* p = (const int*)row;
    long e = kw * 4;
    int c[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) c[j] = (e + j < kvalid) ? __ldg(p + e + j) : 0;
    return lb_pack4(c[0], c[1], c[2], c[3]);
}

template <>
__device__ __forceinline__ u32 lb_a_word<LB_A_F32>(const void* row, long kw, long kvalid,
                                                    float s, int fmt) {
    const float* p = (const float*)row;
    long e = kw * 4;
    int c[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) c[j] = (e + j < kvalid) ? lb_code(__ldg(p + e + j), s, fmt) : 0;
    return lb_pack4(c[0], c[1], c[2], c[3]);
}

// Four consecutive words kw..kw+3 with no checks: the row is 16-byte aligned, kw % 4 == 0,
// every lane is in range and, for codes/f32, K % 4 == 0 (each word is one 16-byte load).
template <int MODE>
__device__ __forceinline__ uint4 lb_a_word4_vec(const void* row, long kw, float s, int fmt) {
    if (MODE == LB_A_PACKED) return __ldg((const uint4*)((const u32*)row + kw));
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (MODE == LB_A_CODES) {
            int4 c = __ldg((const int4*)((const int*)row + (kw + i) * 4));
            w[i] = lb_pack4(c.x, c.y, c.z, c.w);
        } else {
            float4 f = __ldg((const float4*)((const float*)row + (kw + i) * 4));
            w[i] = lb_pack4(lb_code(f.x, s, fmt), lb_code(f.y, s, fmt), lb_code(f.z, s, fmt),
                            lb_code(f.w, s, fmt));
        }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Four consecutive words kw..kw+3 (kw % 4 == 0). `vec` says 16-byte loads are legal: the row
// is 16-byte aligned and, for codes/f32, K % 4 == 0.
template <int MODE>
__device__ __forceinline__ uint4 lb_a_word4(const void* row, long kw, long kvalid, float s,
                                            int fmt, bool vec) {
    const long kend = MODE == LB_A_PACKED ? kw + 4 : (kw + 4) * 4;
    if (vec && kend <= kvalid) return lb_a_word4_vec<MODE>(row, kw, s, fmt);
    uint4 r;
    r.x = lb_a_word<MODE>(row, kw + 0, kvalid, s, fmt);
    r.y = lb_a_word<MODE>(row, kw + 1, kvalid, s, fmt);
    r.z = lb_a_word<MODE>(row, kw + 2, kvalid, s, fmt);
    r.w = lb_a_word<MODE>(row, kw + 3, kvalid, s, fmt);
    return r;
}

// ---- B words ------------------------------------------------------------------------------
// L2 prefetch of the 128-byte line at p; `last`: with the L2 evict_last priority.
__device__ __forceinline__ void lb_prefetch_l2(const void* p, bool last = false) {
    if (last)
        asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p));
    else
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// ---- timeline stamps (diagnostics only) ---------------------------------------------------
// Compiled in only with LB_TRACE = the stamps per block (LOWBIT_CUDA_TRACE=1; TRACE_SLOTS in
// device.rs): thread 0 of each block writes %globaltimer at a kernel's stage `slot` into
// lb_trace[block * LB_TRACE + slot], and its SM + 1 into the last slot at entry; the host
// reads them back (CudaDevice::take_traces).
// Stages: 0 entry, 3 exit; 1 decoder_wgmma's first chunk in smem, the PDL wait passed
// (decoder_mma_reduce, lowrank_wgmma), mma_prep_scale_a's grid barrier passed; 2
// decoder_wgmma's mainloop done, lowrank_wgmma's weight tile and first A tiles in smem; 5
// decoder_wgmma's row sums' barrier passed (LB_DW_T2U: every warp is past the mainloop).
// The small-M tensor-core kernels (lb_mma_small): 1 the PDL wait passed, 2 A staged (block
// barrier passed), 4 thread 0's mma done, 5 the decoder's k-warp sums read back (its split-K
// adds next).
#ifdef LB_TRACE
#define LB_TRACE_BLOCKS 4096
__device__ unsigned long long lb_trace[LB_TRACE_BLOCKS * LB_TRACE];
__device__ __forceinline__ void lb_trace_at(int slot) {
    if (threadIdx.x != 0) return;
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (b >= LB_TRACE_BLOCKS) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    lb_trace[b * LB_TRACE + slot] = t;
    if (slot == 0) {
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        lb_trace[b * LB_TRACE + LB_TRACE - 1] = sm + 1;
    }
}
#else
__device__ __forceinline__ void lb_trace_at(int) {}
#endif

// ---- programmatic dependent launch (sm_90+) ------------------------------------------------
// The small-M kernels are launched with programmatic stream serialization where the device
// supports it (launch.rs, launch_lb): such a kernel may start while the previous kernel of
// the stream still runs. Until griddepcontrol.wait returns (every earlier kernel finished,
// its writes visible) it only prefetches its weights into L2, which is coherent with writes
// still in flight, and works out addresses, so every input is read in stream order. Then it
// lets the next kernel of the stream start, whose weight prefetches overlap this kernel's
// work. `pdl` (LbProblem::pdl): 0 a plain launch (nothing to do), 1 the next kernel may start
// once this one is past its wait, 2 as soon as this one starts. `b`: rows [r0, r1) x words
// [c0, c1), row stride `ldb` words: the block's weights. `mode` (WeightPrefetch in device.rs):
// LB_PF_BULK one bulk prefetch per row (the TMA unit walks its lines) where the rows are
// 16-byte aligned, else 128-byte line prefetches spread over the threads; LB_PF_LAST with
// the L2 evict_last priority, so that the lines outlast the previous kernel's traffic until
// this one reads them. lb_pdl_prologue = lb_pdl_prefetch, then lb_pdl_wait.
// LB_PF_EARLY (the caller's weights are frozen: nothing on the device writes them while these
// kernels run, CudaDevice::with_frozen_weights): the kernel also loads its first weights into
// registers before its wait, so they are on the SM when the previous kernel ends.
// LB_PF_NONE: no prefetch (the trigger as above).
#define LB_PF_BULK 1
#define LB_PF_LAST 2
#define LB_PF_EARLY 4
#define LB_PF_NONE 8
__device__ __forceinline__ void lb_pdl_prefetch(int pdl, int mode, const u32* b, long long ldb,
                                                int r0, int r1, int c0, int c1) {
#if __CUDA_ARCH__ >= 900
    if (pdl == 0) return;
    if (pdl == 2) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (c1 <= c0 || (mode & LB_PF_NONE)) return;
    const bool last = (mode & LB_PF_LAST) != 0;
    // Bulk copies need 16-byte aligned rows: every row is when the first is and the stride
    // and width are whole 16-byte units.
    const u32* first = b + (long long)r0 * ldb + c0;
    if ((mode & LB_PF_BULK) && ((c1 - c0) & 3) == 0 && (ldb & 3) == 0 &&
        ((unsigned long long)first & 15) == 0) {
        unsigned long long pol = 0;
        if (last) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
        for (int r = threadIdx.x; r < r1 - r0; r += blockDim.x) {
            if (last)
                asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(
                                 first + r * ldb),
                             "r"((c1 - c0) * 4), "l"(pol)
                             : "memory");
            else
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(first + r * ldb),
                             "r"((c1 - c0) * 4)
                             : "memory");
        }
        return;
    }
    const int lpr = (c1 - c0 + 31) / 32;  // 128-byte lines per row
    for (int i = threadIdx.x; i < (r1 - r0) * lpr; i += blockDim.x) {
        const int r = i / lpr;
        lb_prefetch_l2(b + (long long)(r0 + r) * ldb + c0 + 32 * (i - r * lpr), last);
    }
#endif
}
__device__ __forceinline__ void lb_pdl_wait(int pdl) {
#if __CUDA_ARCH__ >= 900
    if (pdl == 0) return;
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (pdl == 1) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void lb_pdl_prologue(int pdl, int mode, const u32* b, long long ldb,
                                                int r0, int r1, int c0, int c1) {
    lb_pdl_prefetch(pdl, mode, b, ldb, r0, r1, c0, c1);
    lb_pdl_wait(pdl);
}

// The large-M chain `absmean_scale -> mma_prep_a -> projection` (mma.rs) launches its later
// kernels with programmatic stream serialization too: each waits for the previous one (here)
// before reading anything it may have written, and lets the next one start at once (pdl 2) or
// once past that wait (pdl 1). The projection reads its weights before its own wait, so the
// first kernel of its chain must not let it start before every earlier kernel of the stream
// is complete: mma_prep_a uses pdl 1 where no normal launch of this op precedes it.
__device__ __forceinline__ void lb_pdl_launch_next() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void lb_pdl_chain(int pdl) {
    lb_pdl_prologue(pdl, 0, nullptr, 0, 0, 0, 0, 0);  // nothing to prefetch
}

// Weight loads: read-only (ld.global.nc) and L1::no_allocate, which marks them in SASS
// (`.NA`): with frozen weights (LB_PF_EARLY) the small-M kernels issue them before
// griddepcontrol.wait, and check_pdl_load_order (compile.rs) lets only these be there.
__device__ __forceinline__ u32 lb_ldw(const u32* p) {
    u32 v;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 lb_ldw4(const u32* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Four consecutive B words at `p`, column c of a row of ncols (zero past ncols); `fast`: all
// four are in range and p is 16-byte aligned (one 16-byte load).
__device__ __forceinline__ uint4 lb_b_word4_at(const u32* p, long c, long ncols, bool fast) {
    if (fast) return lb_ldw4(p);
    uint4 v;
    v.x = c + 0 < ncols ? lb_ldw(p + 0) : 0u;
    v.y = c + 1 < ncols ? lb_ldw(p + 1) : 0u;
    v.z = c + 2 < ncols ? lb_ldw(p + 2) : 0u;
    v.w = c + 3 < ncols ? lb_ldw(p + 3) : 0u;
    return v;
}
// Four consecutive B words of row `r` starting at column c (zero past ncols).
__device__ __forceinline__ uint4 lb_b_word4(const u32* b, long ldb, long r, long c, long ncols,
                                            bool vec) {
    return lb_b_word4_at(b + r * ldb + c, c, ncols, vec && c + 4 <= ncols);
}
// The same for the dp4a small-M kernel, written out: through lb_b_word4_at its one-row
// low-rank kernel spilled at its 64-register cap (4.35 against 4.00 us at M = 1 on the H200),
// while the tensor-core small-M kernel measured faster with it.
__device__ __forceinline__ uint4 lb_b_word4_sm(const u32* b, long ldb, long r, long c, long ncols,
                                               bool vec) {
    const u32* p = b + r * ldb + c;
    if (vec && c + 4 <= ncols) return lb_ldw4(p);
    uint4 v;
    v.x = c + 0 < ncols ? lb_ldw(p + 0) : 0u;
    v.y = c + 1 < ncols ? lb_ldw(p + 1) : 0u;
    v.z = c + 2 < ncols ? lb_ldw(p + 2) : 0u;
    v.w = c + 3 < ncols ? lb_ldw(p + 3) : 0u;
    return v;
}

// ---- problem description shared by the projection kernels ---------------------------------
// Rows of A and of the output are (batch, head, token) triples, m = b*T + t:
//   A row of m    = (b * a_heads + a_head) * T + t
//   out row of m  = (b * o_heads + o_head) * T + t
// Lowrank: a_heads = Hin, a_head = hin(h), o_heads = H, o_head = h, B = W + h*Kw*N, one "split"
//          per head (grid z = head).
// Decoder: a_heads = H, a_head = h of the split, o_heads = 1, B = W + h*Lartw*D; grid z (or y
//          on the small-M path) = split = h * splits_per_head + sp.
// Field order (8-byte fields first) is mirrored by `LbProblem` in src/backend/cuda/launch.rs.
struct LbProblem {
    const void* a;          // activations (words, i32 codes or f32)
    const u32* b;           // weight words
    void* out;              // output: f32, or f16/bf16 bits (out_dtype)
    int* partial;           // i32 partials [splits][M][ncols], or null (write `out` directly)
    const float* scale_ptr; // device activation scale, or null (use scale_param)
    unsigned long long* acc; // small-M split-K accumulator [M][ncols] (lb_split_add), or null
    long long lda;          // elements per A row (words for packed, K for codes/f32)
    long long a_kvalid;     // valid elements per A row (same unit as lda)
    long long ldb;          // words per B row (N or D)
    long long ldc;          // output row stride (latent_out or D)
    float scale_param;
    float w_scale;
    int fmt;
    int relu;
    int m_total;            // M = B*T
    int time;               // T
    int heads;              // H
    int a_heads;            // Hin (lowrank) or H (decoder)
    int o_heads;            // H (lowrank) or 1 (decoder)
    int ncols;              // output columns computed (latent_out or D)
    int bcols;              // valid B columns (N or D)
    int kw_head;            // words of K per head (Kw for lowrank, Lw for the decoder)
    int b_head_rows;        // B rows per head (Kw for lowrank, Lartw for the decoder)
    int splits_per_head;    // 1 for lowrank
    int a_vec;              // 16-byte A loads legal
    int b_vec;              // 16-byte B loads legal
    int c_vec;              // float4 output stores legal
    int is_decoder;
    int out_dtype;          // 0 f32, 1 f16, 2 bf16 (round to nearest even)
    int pdl;                // small-M launch: 0 plain, 1 PDL (next kernel after the wait), 2 PDL early
    int pf_mode;            // PDL weights: LB_PF_BULK | LB_PF_LAST | LB_PF_EARLY | LB_PF_NONE
};
static_assert(sizeof(LbProblem) == 168, "LbProblem: the layout of launch.rs");

// lb_inline_absmean over the low-rank projection's whole f32 input x ([B, Hin, T, D],
// contiguous at p.a); the first block writes the scale to p.scale_ptr (no block reads it).
__device__ __forceinline__ float lb_inline_scale(const LbProblem& p, int blocks, double* red) {
    const long long n = (long long)p.m_total * p.a_heads * p.a_kvalid;
    const float s = lb_inline_absmean((const float*)p.a, n, p.fmt, blocks, red);
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0)
        *(float*)p.scale_ptr = s;
    return s;
}

// The decoder's absmean scale of its whole f32 input y ([B, H, T, L], contiguous at p.a), as
// absmean_scale computes it on its grid of `blocks` blocks, worked out by every block of
// this (resident, one-wave) grid together: the block of linear index c computes
// absmean_scale's block partials c, c + grid, .. (lb_absmean_block) into scratch
// partials (p.partial, as doubles; the barrier word after LB_RED_MAX_BLOCKS of them); after
// lb_grid_arrive every block sums them as absmean_scale's last block does, so the same bits
// as the two-kernel path. The first block writes the scale to p.scale_ptr.
#if defined(LB_SM_GRID_SCALE) || defined(LB_MS_GRID_SCALE)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
#error "LB_SM_GRID_SCALE / LB_MS_GRID_SCALE need sm_70+ (the grid barrier)"
#endif
__device__ __forceinline__ float lb_grid_scale(const LbProblem& p, int blocks, double* red) {
    const long long n = (long long)p.m_total * p.heads * p.a_kvalid;
    double* partials = (double*)p.partial;
    unsigned long long* bar = (unsigned long long*)(partials + LB_RED_MAX_BLOCKS);
    const unsigned grid = gridDim.x * gridDim.y * gridDim.z;
    const unsigned c = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned gen = threadIdx.x == 0 ? lb_grid_gen(bar) : 0u;
    for (unsigned b = c; b < (unsigned)blocks; b += grid) {
        const double sum = lb_absmean_block((const float*)p.a, n, p.fmt, (int)b, blocks, red);
        if (threadIdx.x == 0) partials[b] = sum;
    }
    if (threadIdx.x == 0) lb_grid_arrive(bar, gen, grid, c == 0);
    __syncthreads();
    double s = 0.0;
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) s += __ldcg(partials + b);
    const float scale = lb_absmean_scale(lb_block_sum(s, red), n, p.fmt);
    if (threadIdx.x == 0 && c == 0) *(float*)p.scale_ptr = scale;
    return scale;
}
#endif

// Where block `z` works: head, A/B bases and its K range [kw0, kw1) in words.
struct LbSplit {
    int head;
    int a_head;
    int kw0;
    int kw1;
    const u32* b;
};

__device__ __forceinline__ LbSplit lb_split(const LbProblem& p, int z, int kb) {
    LbSplit s;
    if (p.is_decoder) {
        s.head = z / p.splits_per_head;
        int sp = z % p.splits_per_head;
        int chunk = (p.kw_head + p.splits_per_head - 1) / p.splits_per_head;
        chunk = (chunk + kb - 1) / kb * kb;
        s.kw0 = min(sp * chunk, p.kw_head);
        s.kw1 = min(s.kw0 + chunk, p.kw_head);
        s.a_head = s.head;
    } else {
        s.head = z;
        s.kw0 = 0;
        s.kw1 = p.kw_head;
        s.a_head = p.a_heads == 1 ? 0 : z;
    }
    s.b = p.b + (long long)s.head * p.b_head_rows * p.ldb;
    return s;
}

__device__ __forceinline__ long long lb_a_row(const LbProblem& p, int m, int a_head) {
    int b = m / p.time, t = m - b * p.time;
    return ((long long)(b * p.a_heads + a_head) * p.time + t) * p.lda;
}

__device__ __forceinline__ long long lb_out_row(const LbProblem& p, int m, int o_head) {
    int b = m / p.time, t = m - b * p.time;
    return ((long long)(b * p.o_heads + o_head) * p.time + t) * p.ldc;
}

__device__ __forceinline__ const void* lb_a_ptr(const LbProblem& p, long long elem) {
    return (const void*)((const char*)p.a + elem * 4);
}

// 16-byte global -> shared copies: cp.async on sm_80+, a plain load/store before that.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#else
    *(uint4*)smem = __ldg((const uint4*)gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---- tiled path ---------------------------------------------------------------------------
#if defined(LB_BM)
// Block tile LB_BM x LB_BN outputs, LB_BK words of K per stage, two smem stages; each thread
// owns LB_TM (4 or 8) rows x 8 columns (two groups of 4, LB_BN/2 apart, so float4 stores
// coalesce).
#ifndef LB_FAST
#define LB_FAST 0
#endif
#define LB_TX (LB_BN / 8)
#define LB_TY (LB_BM / LB_TM)
#define LB_A_CHUNKS (LB_BM * LB_BK / 4 / LB_THREADS)
#define LB_B_CHUNKS (LB_BK * LB_BN / 4 / LB_THREADS)

// One K word of a thread's LB_TM x 8 tile: `a` = its LB_TM rows of smem A at that k, `b` =
// the smem B row at that k (columns tx*4.. and LB_BN/2 + tx*4..).
template <bool UNS>
__device__ __forceinline__ void lb_tile_step(int (&acc)[LB_TM][8], const u32* a, const u32* b,
                                             int tx) {
    const uint4 a0 = *(const uint4*)a;
#if LB_TM > 4
    const uint4 a1 = *(const uint4*)(a + 4);
    const u32 av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#else
    const u32 av[4] = {a0.x, a0.y, a0.z, a0.w};
#endif
    const uint4 b0 = *(const uint4*)(b + tx * 4);
    const uint4 b1 = *(const uint4*)(b + LB_BN / 2 + tx * 4);
#pragma unroll
    for (int i = 0; i < LB_TM; ++i) {
        acc[i][0] = dot4<UNS>(av[i], b0.x, acc[i][0]);
        acc[i][1] = dot4<UNS>(av[i], b0.y, acc[i][1]);
        acc[i][2] = dot4<UNS>(av[i], b0.z, acc[i][2]);
        acc[i][3] = dot4<UNS>(av[i], b0.w, acc[i][3]);
        acc[i][4] = dot4<UNS>(av[i], b1.x, acc[i][4]);
        acc[i][5] = dot4<UNS>(av[i], b1.y, acc[i][5]);
        acc[i][6] = dot4<UNS>(av[i], b1.z, acc[i][6]);
        acc[i][7] = dot4<UNS>(av[i], b1.w, acc[i][7]);
    }
}

// A thread's LB_TM x 8 tile with every row < M and both column groups valid and 16-byte
// aligned (c_vec), dequantized with the epilogue fixed at compile time. `m` is its first row,
// `n` the first column of group 0; rows advance by counters, with no divisions.
template <int DT, bool RELU>
__device__ __forceinline__ void lb_tile_store(const LbProblem& p, const int (&acc)[LB_TM][8], int m,
                                              int n, int o_head, float as) {
    int t = m % p.time;
    long long o = lb_out_row(p, m, o_head) + n;
    // From the last token of one batch to the first of the next (other heads' rows between).
    const long long skip = (long long)(p.o_heads - 1) * p.time * p.ldc;
#pragma unroll
    for (int i = 0; i < LB_TM; ++i) {
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            float f[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) f[j] = lb_dequant(acc[i][g * 4 + j], p.w_scale, as, RELU);
            lb_stcs4(p.out, o + g * (LB_BN / 2), f, DT);
        }
        o += p.ldc;
        if (++t == p.time) {
            t = 0;
            o += skip;
        }
    }
}

// A thread's LB_TM x 8 tile at (m0 + ty*LB_TM, n0 + tx*4 | n0 + LB_BN/2 + tx*4): i32 partials
// of split blockIdx.z (split-K), or (acc * w_scale) * a_scale in the output dtype.
__device__ __forceinline__ void lb_tile_epilogue(const LbProblem& p, const int (&acc)[LB_TM][8],
                                                 int m0, int n0, int ty, int tx, int o_head) {
    const float as = p.partial ? 0.0f : lb_scale(p.scale_ptr, p.scale_param);
    const int mt = m0 + ty * LB_TM, nt = n0 + tx * 4;
    if (!p.partial && p.c_vec && mt + LB_TM <= p.m_total && n0 + LB_BN <= p.ncols) {
        const int e = p.out_dtype * 2 + (p.relu ? 1 : 0);  // uniform over the block
        switch (e) {
            case 0: lb_tile_store<0, false>(p, acc, mt, nt, o_head, as); break;
            case 1: lb_tile_store<0, true>(p, acc, mt, nt, o_head, as); break;
            case 2: lb_tile_store<1, false>(p, acc, mt, nt, o_head, as); break;
            case 3: lb_tile_store<1, true>(p, acc, mt, nt, o_head, as); break;
            case 4: lb_tile_store<2, false>(p, acc, mt, nt, o_head, as); break;
            default: lb_tile_store<2, true>(p, acc, mt, nt, o_head, as); break;
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < LB_TM; ++i) {
        int m = mt + i;
        if (m >= p.m_total) break;
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            int n = nt + g * (LB_BN / 2);
            if (p.partial) {
                int* dst = p.partial + ((long long)blockIdx.z * p.m_total + m) * p.ncols + n;
                if (p.c_vec && n + 4 <= p.ncols) {
                    *(int4*)dst = make_int4(acc[i][g * 4], acc[i][g * 4 + 1], acc[i][g * 4 + 2],
                                            acc[i][g * 4 + 3]);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (n + j < p.ncols) dst[j] = acc[i][g * 4 + j];
                }
            } else {
                const long long o = lb_out_row(p, m, o_head) + n;
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (n + j < p.ncols)
                        lb_store(p.out, o + j, lb_dequant(acc[i][g * 4 + j], p.w_scale, as, p.relu),
                                 p.out_dtype);
            }
        }
    }
}

template <int MODE, bool UNS>
__device__ __forceinline__ void lb_tiled(const LbProblem& p) {
    // A is stored k-major (As[k][m]) so a thread reads its 8 rows of one k as two 16-byte
    // words; it is staged through registers (loaded before the compute of the previous
    // stage, stored after it). B keeps its [k][n] layout and arrives by cp.async.
    __shared__ __align__(16) u32 As[2][LB_BK][LB_BM];
    __shared__ __align__(16) u32 Bs[2][LB_BK][LB_BN];

    const int tid = threadIdx.x;
    const int tx = tid % LB_TX, ty = tid / LB_TX;
    const int n0 = blockIdx.x * LB_BN, m0 = blockIdx.y * LB_BM;
    const LbSplit sp = lb_split(p, blockIdx.z, LB_BK);
    const float s = (MODE == LB_A_F32) ? lb_scale(p.scale_ptr, p.scale_param) : 0.0f;
    const long long kv = MODE == LB_A_PACKED ? min((long long)sp.kw1, p.a_kvalid)
                                             : min((long long)sp.kw1 * 4, p.a_kvalid);
    // Chunk i of a stage: A row a_r (lanes on consecutive rows, so the transposing smem
    // stores hit distinct banks), words a_kc(i)..+3; B row b_r(i), columns b_c..b_c+3.
    // LB_FAST (chosen per launch: 16-byte loads legal, whole stages of K in every split) loads
    // without checks: rows past M read row M-1 and columns past the weights the last quad, and
    // the epilogue never stores what they feed.
    const int a_r = tid % LB_BM;
    const int a_m = LB_FAST ? min(m0 + a_r, p.m_total - 1) : m0 + a_r;
    const long long a_row = a_m < p.m_total ? lb_a_row(p, a_m, sp.a_head) : -1;
    const void* a_ptr = lb_a_ptr(p, a_row < 0 ? 0 : a_row);
    auto a_kc = [&](int i) { return ((tid + i * LB_THREADS) / LB_BM) * 4; };
    auto b_r = [&](int i) { return (tid + i * LB_THREADS) / (LB_BN / 4); };
    const int b_c = (tid % (LB_BN / 4)) * 4;
    const u32* b_ptr = sp.b + (LB_FAST ? min(n0 + b_c, p.bcols - 4) : n0 + b_c);

    // LB_FAST: the weight rows of chunk 0 of the next stage, and the step between chunks.
    const u32* b_run = b_ptr + (long long)(sp.kw0 + b_r(0)) * p.ldb;
    const long long b_step = (long long)(b_r(1 % LB_B_CHUNKS) - b_r(0)) * p.ldb;

    uint4 stage[LB_A_CHUNKS];
    auto load_a = [&](int kw) {
#pragma unroll
        for (int i = 0; i < LB_A_CHUNKS; ++i) {
            const int k = kw + a_kc(i);
            if (LB_FAST)
                stage[i] = lb_a_word4_vec<MODE>(a_ptr, k, s, p.fmt);
            else if (a_row < 0 || k >= sp.kw1)
                stage[i] = make_uint4(0u, 0u, 0u, 0u);
            else
                stage[i] = lb_a_word4<MODE>(a_ptr, k, kv, s, p.fmt, p.a_vec != 0);
        }
    };
    auto store_a = [&](int buf) {
#pragma unroll
        for (int i = 0; i < LB_A_CHUNKS; ++i) {
            const int kc = a_kc(i);
            As[buf][kc + 0][a_r] = stage[i].x;
            As[buf][kc + 1][a_r] = stage[i].y;
            As[buf][kc + 2][a_r] = stage[i].z;
            As[buf][kc + 3][a_r] = stage[i].w;
        }
    };
    auto load_b = [&](int buf, int kw) {
#pragma unroll
        for (int i = 0; i < LB_B_CHUNKS; ++i) {
            const int r = b_r(i), k = kw + r, n = n0 + b_c;
            u32* dst = &Bs[buf][r][b_c];
            if (LB_FAST)
                cp_async16(dst, b_run + i * b_step);
            else if (k < sp.kw1 && p.b_vec && n + 4 <= p.bcols)
                cp_async16(dst, b_ptr + (long long)k * p.ldb);
            else if (k >= sp.kw1)
                *(uint4*)dst = make_uint4(0u, 0u, 0u, 0u);
            else  // b_ptr is column n: columns past the weights are zero
                *(uint4*)dst = lb_b_word4(b_ptr, p.ldb, k, 0, p.bcols - n, false);
        }
        cp_async_commit();
        if (LB_FAST) b_run += LB_BK * p.ldb;
    };

    int acc[LB_TM][8];
#pragma unroll
    for (int i = 0; i < LB_TM; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0;

    const int ntiles = (sp.kw1 - sp.kw0 + LB_BK - 1) / LB_BK;
    if (ntiles > 0) {
        load_a(sp.kw0);
        load_b(0, sp.kw0);
        store_a(0);
    }
    for (int t = 0; t < ntiles; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < ntiles;
        if (more) {
            load_a(sp.kw0 + (t + 1) * LB_BK);
            load_b(buf ^ 1, sp.kw0 + (t + 1) * LB_BK);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < LB_BK; ++k) lb_tile_step<UNS>(acc, &As[buf][k][ty * LB_TM], &Bs[buf][k][0], tx);
        if (more) store_a(buf ^ 1);
        __syncthreads();
    }

    lb_tile_epilogue(p, acc, m0, n0, ty, tx, p.is_decoder ? 0 : sp.head);
}

#endif  // LB_BM

// ---- split-K on the small-M paths ---------------------------------------------------------
// Every block of a split-K launch adds its i32 partial v of element e = m * ncols + c to the
// zeroed u64 accumulator `p.acc` as (1 << 48) + (u32)v: bits 48 and up count the splits that
// have added, the low 32 bits are the i32 sum (wrapping, like the reference; the low 48 bits
// cannot carry into the count below 65536 splits). The add that brings the count to `nsplits`
// returns every other split's share: its thread writes the output and zeroes the element for
// the next launch on this stream. One atomic round trip, no fence, counter or re-read; integer
// sums are order-free, so the same bits on every run.
#define LB_SPLIT_ONE (1ull << 48)
// The u64 add of split-K element e, issued only where `ok`; returns the old value (0 where not
// `ok`). Inline PTX under a predicate (`atom` without .sem/.scope: relaxed, gpu scope, as
// atomicAdd; also legal on the dp4a family's pre-sm_70 targets): written as
// `if (ok) tot = atomicAdd(..) + inc`, NVRTC
// branched around each add and waited for its return inside the branch, so a thread's EPT
// round trips ran one after another (ncu's SASS of decoder_mma_small at M = 16: four in a row).
__device__ __forceinline__ unsigned long long lb_split_add(const LbProblem& p, bool ok, long long e,
                                                           unsigned long long inc) {
    unsigned long long old = 0ull;
    asm volatile(
        "{\n\t.reg .pred q;\n\tsetp.ne.b32 q, %3, 0;\n\t@q atom.global.add.u64 %0, [%1], %2;\n\t}"
        : "+l"(old)
        : "l"(p.acc + (ok ? e : 0)), "l"(inc), "r"((int)ok)
        : "memory");
    return old;
}
__device__ __forceinline__ unsigned long long lb_split_inc(int v) {
    return LB_SPLIT_ONE + (unsigned long long)(u32)v;
}
// Element e's running total `tot` (its add's old value + its increment): the last split's
// thread stores output index o.
__device__ __forceinline__ void lb_split_finish(const LbProblem& p, long long e, long long o,
                                                unsigned long long tot, unsigned nsplits,
                                                float as) {
    if ((tot >> 48) != nsplits) return;
    p.acc[e] = 0ull;
    lb_store(p.out, o, lb_dequant((int)(u32)tot, p.w_scale, as, p.relu), p.out_dtype);
}
// The end of a small-M kernel: this thread's element i < EPT, of i32 value v[i], lives where
// `at(i, e, o)` is true (e: its index in p.acc, o: in the output). Without p.acc it is
// stored; with it (split-K) every add is issued before the first total is looked at.
template <int EPT, typename At>
__device__ __forceinline__ void lb_small_finish(const LbProblem& p, const int (&v)[EPT], At at,
                                                float as) {
    long long e = 0, o = 0;
    if (p.acc == nullptr) {
#pragma unroll
        for (int i = 0; i < EPT; ++i)
            if (at(i, e, o))
                lb_store(p.out, o, lb_dequant(v[i], p.w_scale, as, p.relu), p.out_dtype);
        return;
    }
    unsigned long long old[EPT];
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        const bool ok = at(i, e, o);
        old[i] = lb_split_add(p, ok, e, lb_split_inc(v[i]));
    }
#pragma unroll
    for (int i = 0; i < EPT; ++i)
        if (at(i, e, o)) lb_split_finish(p, e, o, old[i] + lb_split_inc(v[i]), gridDim.y, as);
}

// ---- small-M path -------------------------------------------------------------------------
#if defined(LB_SMALL_M)
// M <= LB_SMALL_M rows; weights streamed once. A warp is 8 column quads x 4 k-lanes; a block
// is LB_SM_CW warps along columns x (8 / LB_SM_CW) warps along K. A chunks of LB_SM_KC words
// sit in smem k-major ([k][m]) so every lane reads its rows with broadcast loads. Decoder
// split-K (grid y = split): integer atomics into a zeroed [M][D] accumulator, and the last
// block of each column tile (a counter) writes the output: the same bits on every run.
#define LB_SM_KWARPS (LB_THREADS / 32 / LB_SM_CW)
#define LB_SM_KLANES (LB_SM_KWARPS * 4)
#define LB_SM_COLS (LB_SM_CW * 32)
#ifndef LB_SM_BATCH
#if LB_SMALL_M >= 16
#define LB_SM_BATCH 4  // 16 rows of accumulators leave registers for 4 in-flight rows
#else
#define LB_SM_BATCH 8
#endif
#endif
// 16-byte quads of A per thread per chunk.
#define LB_SM_AITERS ((LB_SMALL_M * LB_SM_KC / 4 + LB_THREADS - 1) / LB_THREADS)

template <int MODE, bool UNS>
__device__ __forceinline__ void lb_small_m(const LbProblem& p) {
    __shared__ __align__(16) u32 As[LB_SM_KC][LB_SMALL_M];
    __shared__ int red[LB_SM_KWARPS][LB_SMALL_M][LB_SM_COLS];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kl = lane >> 3, cq = lane & 7;
    const int wc = warp % LB_SM_CW, wk = warp / LB_SM_CW;
    const int kli = wk * 4 + kl;
    const int col_local = wc * 32 + cq * 4;
    const int tile0 = blockIdx.x * LB_SM_COLS;
    const int c0 = tile0 + col_local;
    const LbSplit sp = lb_split(p, blockIdx.y, 4);
    lb_pdl_prefetch(p.pdl, p.pf_mode, sp.b, p.ldb, sp.kw0, sp.kw1, tile0,
                    min(tile0 + LB_SM_COLS, p.bcols));

    int acc[LB_SMALL_M][4];
#pragma unroll
    for (int m = 0; m < LB_SMALL_M; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[m][j] = 0;

    // Batches of LB_SM_BATCH weight rows (rows r0 + u*LB_SM_KLANES of the chunk at k0, zero
    // past kn): every load of a batch is issued before the first is used.
    uint4 b[LB_SM_BATCH];
    auto load_b = [&](int k0, int r0, int kn) {
#pragma unroll
        for (int u = 0; u < LB_SM_BATCH; ++u) {
            const int r = r0 + u * LB_SM_KLANES;
            b[u] = r < kn ? lb_b_word4_sm(sp.b, p.ldb, k0 + r, c0, p.bcols, p.b_vec != 0)
                          : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    // The first batch is in flight while A is staged (frozen weights: already before the
    // wait); the second is warmed in L2.
    const bool early = (p.pf_mode & LB_PF_EARLY) != 0;
    if (early && sp.kw0 < sp.kw1) load_b(sp.kw0, kli, min(LB_SM_KC, sp.kw1 - sp.kw0));
    lb_pdl_wait(p.pdl);
#if defined(LB_SM_SCALE_BLOCKS) || defined(LB_SM_GRID_SCALE)
    // The scale worked out here while the first weights fly: by this block (lb_inline_scale,
    // the low-rank projection) or by the grid (lb_grid_scale, the decoder).
    static_assert(MODE == LB_A_F32, "computed scale: f32 input");
    if (!early && sp.kw0 < sp.kw1) load_b(sp.kw0, kli, min(LB_SM_KC, sp.kw1 - sp.kw0));
    __shared__ double scale_red[LB_THREADS];
#if defined(LB_SM_SCALE_BLOCKS)
    static_assert(LB_SM_SCALE_BLOCKS >= 1 && LB_SM_SCALE_BLOCKS <= 32, "scale blocks");
    const float a_scale = lb_inline_scale(p, LB_SM_SCALE_BLOCKS, scale_red);
#else
    static_assert(LB_SM_GRID_SCALE >= 1 && LB_SM_GRID_SCALE <= LB_RED_MAX_BLOCKS, "scale blocks");
    const float a_scale = lb_grid_scale(p, LB_SM_GRID_SCALE, scale_red);
#endif
#define LB_SM_A_SCALE a_scale
#else
#define LB_SM_A_SCALE lb_scale(p.scale_ptr, p.scale_param)
#endif
    const float s = (MODE == LB_A_F32) ? LB_SM_A_SCALE : 0.0f;
    const long long kv = MODE == LB_A_PACKED ? min((long long)sp.kw1, p.a_kvalid)
                                             : min((long long)sp.kw1 * 4, p.a_kvalid);
#if !defined(LB_SM_SCALE_BLOCKS) && !defined(LB_SM_GRID_SCALE)
    if (!early && sp.kw0 < sp.kw1) load_b(sp.kw0, kli, min(LB_SM_KC, sp.kw1 - sp.kw0));
#endif
    for (int u = LB_SM_BATCH; u < 2 * LB_SM_BATCH; ++u) {
        const int r = sp.kw0 + kli + u * LB_SM_KLANES;
        if (r < sp.kw1 && c0 < p.bcols) lb_prefetch_l2(sp.b + (long long)r * p.ldb + c0);
    }

    for (int k0 = sp.kw0; k0 < sp.kw1; k0 += LB_SM_KC) {
        // Stage A: every 16-byte quad (row m, words 4q..4q+3) is loaded before any is
        // stored, rows fastest across lanes so the transposing stores spread over banks.
        uint4 st[LB_SM_AITERS];
#pragma unroll
        for (int i = 0; i < LB_SM_AITERS; ++i) {
            const int idx = tid + i * LB_THREADS;
            const int m = idx % LB_SMALL_M, k = k0 + (idx / LB_SMALL_M) * 4;
            st[i] = make_uint4(0u, 0u, 0u, 0u);
            if (idx < LB_SMALL_M * LB_SM_KC / 4 && m < p.m_total && k < sp.kw1)
                st[i] = lb_a_word4<MODE>(lb_a_ptr(p, lb_a_row(p, m, sp.a_head)), k, kv, s, p.fmt,
                                         p.a_vec != 0);
        }
#pragma unroll
        for (int i = 0; i < LB_SM_AITERS; ++i) {
            const int idx = tid + i * LB_THREADS;
            const int m = idx % LB_SMALL_M, kq = (idx / LB_SMALL_M) * 4;
            if (idx < LB_SMALL_M * LB_SM_KC / 4) {
                As[kq + 0][m] = st[i].x;
                As[kq + 1][m] = st[i].y;
                As[kq + 2][m] = st[i].z;
                As[kq + 3][m] = st[i].w;
            }
        }
        __syncthreads();
        const int kn = min(LB_SM_KC, sp.kw1 - k0);
        // `b` holds the batch at r0 (loaded before this chunk's A, or after the last batch).
        for (int r0 = kli; r0 < kn; r0 += LB_SM_BATCH * LB_SM_KLANES) {
#pragma unroll
            for (int u = 0; u < LB_SM_BATCH; ++u) {
                const int r = min(r0 + u * LB_SM_KLANES, kn - 1);  // b[u] is zero past kn
#pragma unroll
                for (int m = 0; m < LB_SMALL_M; ++m) {
                    const u32 a = As[r][m];
                    acc[m][0] = dot4<UNS>(a, b[u].x, acc[m][0]);
                    acc[m][1] = dot4<UNS>(a, b[u].y, acc[m][1]);
                    acc[m][2] = dot4<UNS>(a, b[u].z, acc[m][2]);
                    acc[m][3] = dot4<UNS>(a, b[u].w, acc[m][3]);
                }
            }
            const int next = r0 + LB_SM_BATCH * LB_SM_KLANES;
            if (next < kn) load_b(k0, next, kn);
        }
        // The next chunk's first batch flies while its A is staged.
        if (k0 + LB_SM_KC < sp.kw1)
            load_b(k0 + LB_SM_KC, kli, min(LB_SM_KC, sp.kw1 - k0 - LB_SM_KC));
        __syncthreads();
    }

    // Sum the 4 k-lanes of each warp (integer: any fixed order gives the same bits), then the
    // K warps through smem; every thread then owns (row, column) pairs of the tile.
#pragma unroll
    for (int m = 0; m < LB_SMALL_M; ++m)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            acc[m][j] += __shfl_xor_sync(0xffffffffu, acc[m][j], 8);
            acc[m][j] += __shfl_xor_sync(0xffffffffu, acc[m][j], 16);
        }
    if (kl == 0) {
#pragma unroll
        for (int m = 0; m < LB_SMALL_M; ++m)
#pragma unroll
            for (int j = 0; j < 4; ++j) red[wk][m][col_local + j] = acc[m][j];
    }
    __syncthreads();
    const int o_head = p.is_decoder ? 0 : sp.head;
    const int rows = min(p.m_total, LB_SMALL_M);
    const float as = LB_SM_A_SCALE;
#undef LB_SM_A_SCALE
    // Element i of this thread: row m, column c of the rows x COLS tile; false past M or ncols.
    constexpr int EPT = (LB_SMALL_M * LB_SM_COLS + LB_THREADS - 1) / LB_THREADS;
    auto elem = [&](int i, int& m, int& c) {
        const int idx = tid + i * LB_THREADS;
        m = idx / LB_SM_COLS;
        c = tile0 + idx % LB_SM_COLS;
        return m < rows && c < p.ncols;
    };
    int v[EPT];
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        int m, c;
        v[i] = 0;
        if (elem(i, m, c)) {
#pragma unroll
            for (int w = 0; w < LB_SM_KWARPS; ++w) v[i] += red[w][m][c - tile0];
        }
    }
    // Split-K is the decoder's (o_head 0, output row m at m * ldc).
    lb_small_finish(p, v, [&](int i, long long& e, long long& o) {
        int m, c;
        if (!elem(i, m, c)) return false;
        e = (long long)m * p.ncols + c;
        o = (p.acc ? (long long)m * p.ldc : lb_out_row(p, m, o_head)) + c;
        return true;
    }, as);
}
#endif  // LB_SMALL_M

template <int MODE, bool UNS>
__device__ __forceinline__ void lb_project(const LbProblem& p) {
#if defined(LB_SMALL_M)
    lb_small_m<MODE, UNS>(p);
#elif defined(LB_BM)
    lb_tiled<MODE, UNS>(p);
#endif
}

// ---- float path (no activation quantization): sum (w_code * w_scale) * x in f32 ------------
// 16x16 threads, 64x64 outputs per block, 4x4 per thread, K tiles of 16 elements. Element k
// of A row m is x; weight element (k, n) is byte k%4 of word (k/4, n) of its head's block.
#define LB_FT 64
#define LB_FK 16

__device__ __forceinline__ float lb_w_elem(const u32* b, long long ldb, long long k, long long n) {
    u32 w = __ldg(b + (k >> 2) * ldb + n);
    return (float)(signed char)((w >> (8 * (k & 3))) & 0xffu);
}

// Float path: `p.lda` = K elements per row of one head; for the decoder, K spans heads:
// element k is (h = k / L, l = k % L) with L = p.a_kvalid.
__device__ __forceinline__ void lb_float(const LbProblem& p) {
    __shared__ float As[LB_FK][LB_FT + 1];
    __shared__ float Bs[LB_FK][LB_FT];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int n0 = blockIdx.x * LB_FT, m0 = blockIdx.y * LB_FT;
    const int head = p.is_decoder ? 0 : blockIdx.z;
    const long long L = p.a_kvalid;
    const long long ktotal = p.is_decoder ? L * p.heads : L;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (long long k0 = 0; k0 < ktotal; k0 += LB_FK) {
        for (int idx = tid; idx < LB_FT * LB_FK; idx += 256) {
            int r = idx / LB_FK, kk = idx % LB_FK;
            long long k = k0 + kk;
            int m = m0 + r;
            float v = 0.0f;
            if (m < p.m_total && k < ktotal) {
                int h = p.is_decoder ? (int)(k / L) : (p.a_heads == 1 ? 0 : head);
                long long l = p.is_decoder ? k % L : k;
                v = __ldg((const float*)p.a + lb_a_row(p, m, h) + l);
            }
            As[kk][r] = v;
        }
        for (int idx = tid; idx < LB_FT * LB_FK; idx += 256) {
            int kk = idx / LB_FT, c = idx % LB_FT;
            long long k = k0 + kk;
            int n = n0 + c;
            float w = 0.0f;
            if (n < p.bcols && k < ktotal) {
                int h = p.is_decoder ? (int)(k / L) : head;
                long long l = p.is_decoder ? k % L : k;
                const u32* b = p.b + (long long)h * p.b_head_rows * p.ldb;
                w = __fmul_rn(lb_w_elem(b, p.ldb, l, n), p.w_scale);
            }
            Bs[kk][c] = w;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < LB_FK; ++kk) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    acc[i][j] = fmaf(Bs[kk][tx + 16 * j], As[kk][ty + 16 * i], acc[i][j]);
        }
        __syncthreads();
    }
    const int o_head = p.is_decoder ? 0 : head;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= p.m_total) continue;
        const long long o = lb_out_row(p, m, o_head);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            const float v = acc[i][j];
            if (n < p.ncols) lb_store(p.out, o + n, p.relu ? (v > 0.0f ? v : 0.0f) : v, p.out_dtype);
        }
    }
}
