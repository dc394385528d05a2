// decoder_tail.cu — decoder tail out[B,1,T,D] = sum_h y[B,h,T,L] . W[h*Lart + l, D] (i8x4 words
// along L per head), dequantized as (acc * w_scale) * a_scale.
//
// K = H*L is long (32768 at BDH sizes) and the output narrow (D = 256), so K is split: each
// block of grid z (tiled) / y (small-M) covers one slice of one head. Tiled: i32 partials go
// to a workspace [splits][M][D], summed in split order by decoder_reduce; small-M: integer
// atomics (lb_split_add). Either way the result is the same bits run to run.
// Glossary: see common.cuh.

#ifndef LB_UNS
#define LB_UNS 0
#endif

#if defined(LB_FLOAT)
extern "C" __global__ void __launch_bounds__(256) decoder_float(LbProblem p) { lb_float(p); }
#elif defined(LB_REDUCE)
// out[m, n] = dequant(sum over splits of partial[z][m][n]), z ascending.
extern "C" __global__ void __launch_bounds__(256) decoder_reduce(LbProblem p, int splits) {
    long long total = (long long)p.m_total * p.ncols;
    const float as = lb_scale(p.scale_ptr, p.scale_param);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int sum = 0;
        for (int z = 0; z < splits; ++z) sum += p.partial[z * total + i];
        long long m = i / p.ncols, n = i % p.ncols;
        lb_store(p.out, m * p.ldc + n, lb_dequant(sum, p.w_scale, as, p.relu), p.out_dtype);
    }
}
#elif LB_MODE == LB_A_PACKED
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) decoder_packed(LbProblem p) {
    lb_project<LB_A_PACKED, LB_UNS != 0>(p);  // UNS: words packed from uint8pos codes
}
#elif LB_MODE == LB_A_CODES
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) decoder_codes(LbProblem p) {
    lb_project<LB_A_CODES, LB_UNS != 0>(p);
}
#elif LB_MODE == LB_A_F32
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) decoder_f32(LbProblem p) {
    lb_project<LB_A_F32, LB_UNS != 0>(p);
}
#endif
