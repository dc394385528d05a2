// quantize.cu — per-tensor activation quantization (SPEC.md).
//   absmean_scale       scale = max(max(2*mean, EPS)/qmax, EPS), mean of |x| (of max(x,0) for
//                       uint8pos), summed in f64 in a fixed order: per thread a fixed strided
//                       run (of float4s where x is 16-byte aligned), a fixed tree per block,
//                       and the last block to finish sums the block partials in block order —
//                       the same bits on every run.
//   quantize_codes      x -> one i32 code per element
//   quantize_pack_i8x4  x[rows, k] -> words[rows, ceil(k/4)] (zero-padded last word)
// Glossary: see common.cuh.

#define LB_RED_THREADS 256

extern "C" __global__ void __launch_bounds__(LB_RED_THREADS)
    absmean_scale(const float* x, long long n, int fmt, double* partials, unsigned* counter,
                  float* scale_out) {
    __shared__ double red[LB_RED_THREADS];
    __shared__ unsigned is_last;
    lb_pdl_launch_next();  // a kernel launched after this one in a PDL chain waits for it
    const int tid = threadIdx.x;
    const bool pos = fmt == LB_FMT_U8POS;
    // 16-byte loads where x is aligned (the block's loads in flight at once), then the tail.
    const long long n4 = ((unsigned long long)x & 15) == 0 ? n / 4 : 0;
    const long long first = blockIdx.x * (long long)LB_RED_THREADS + tid;
    const long long stride = (long long)gridDim.x * LB_RED_THREADS;
    double sum = 0.0;
#pragma unroll 4
    for (long long i = first; i < n4; i += stride) {
        const float4 v = ((const float4*)x)[i];
        sum += lb_abs_term(v.x, pos);
        sum += lb_abs_term(v.y, pos);
        sum += lb_abs_term(v.z, pos);
        sum += lb_abs_term(v.w, pos);
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) sum += lb_abs_term(x[i], pos);
    sum = lb_block_sum(sum, red);
    if (tid == 0) {
        partials[blockIdx.x] = sum;
        __threadfence();
        unsigned prev = atomicAdd(counter, 1u);
        is_last = prev == gridDim.x - 1 ? 1u : 0u;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    double s = 0.0;
    for (unsigned b = tid; b < gridDim.x; b += LB_RED_THREADS) s += __ldcg(partials + b);
    s = lb_block_sum(s, red);
    if (tid == 0) {
        *scale_out = lb_absmean_scale(s, n, fmt);
        *counter = 0u;  // ready for the next launch on this stream
    }
}

extern "C" __global__ void __launch_bounds__(256)
    quantize_codes(const float* x, long long n, int fmt, const float* scale_ptr, float scale_param,
                   int* codes) {
    const float s = lb_scale(scale_ptr, scale_param);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        codes[i] = lb_code(x[i], s, fmt);
}

extern "C" __global__ void __launch_bounds__(256)
    quantize_pack_i8x4(const float* x, long long rows, long long k, int fmt, const float* scale_ptr,
                       float scale_param, u32* words) {
    lb_pdl_launch_next();  // as absmean_scale: a small-M kernel after it may prefetch, then wait
    const float s = lb_scale(scale_ptr, scale_param);
    const long long kw = (k + 3) / 4, total = rows * kw;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / kw, w = i % kw;
        words[i] = lb_a_word<LB_A_F32>(x + r * k, w, k, s, fmt);
    }
}
