// microbench.cu — ceilings to judge the kernels by.
//   dp4a_ceiling    LB_CHAINS independent __dp4a chains per thread, `iters` rounds; counted
//                   as 8 int ops per dp4a. Each chain feeds its accumulator back in as the
//                   first operand, so no round can be hoisted or folded.
//   copy_bandwidth  16-byte grid-stride device-to-device copy (count bytes read + written).
// Glossary: see common.cuh.

#ifndef LB_CHAINS
#define LB_CHAINS 16
#endif

extern "C" __global__ void __launch_bounds__(256) dp4a_ceiling(int iters, int* out) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    int acc[LB_CHAINS];
#pragma unroll
    for (int c = 0; c < LB_CHAINS; ++c) acc[c] = (int)(t * 0x01010101u + (u32)c);
    const int b = (int)(t ^ 0x7f3f1f0fu);
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int c = 0; c < LB_CHAINS; ++c) acc[c] = __dp4a(acc[c], b, acc[c]);
    }
    int s = 0;
#pragma unroll
    for (int c = 0; c < LB_CHAINS; ++c) s ^= acc[c];
    out[t] = s;
}

extern "C" __global__ void __launch_bounds__(256)
    copy_bandwidth(const uint4* __restrict__ src, uint4* __restrict__ dst, long long n16) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n16;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = __ldcs(src + i);
}
