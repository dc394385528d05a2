// microbench.cu — ceilings to judge the kernels by.
//   dp4a_ceiling    LB_CHAINS independent __dp4a chains per thread, `iters` rounds; counted
//                   as 8 int ops per dp4a. Each chain feeds its accumulator back in as the
//                   first operand, so no round can be hoisted or folded.
//   copy_bandwidth  16-byte grid-stride device-to-device copy (count bytes read + written).
//   stream_read     each block reads its contiguous share of the p.ldb words at p.b once
//                   (16-byte loads, 8 in flight per thread) and writes one word per warp to
//                   p.out. Launched like the small-M kernels (lb_pdl_prologue, p.pdl), a
//                   chain of them is the floor of dependent ops that stream their weights.
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

extern "C" __global__ void __launch_bounds__(256) stream_read(LbProblem p) {
    const long long n16 = p.ldb / 4;
    const long long per = (n16 + gridDim.x - 1) / gridDim.x;
    const long long q0 = min(n16, blockIdx.x * per), q1 = min(n16, q0 + per);
    lb_pdl_prologue(p.pdl, 0, p.b, 0, 0, 1, (int)(q0 * 4), (int)(q1 * 4));
    const uint4* src = (const uint4*)p.b;
    u32 x = 0;
    for (long long q = q0 + threadIdx.x; q < q1; q += 8 * blockDim.x) {
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u)
            v[u] = q + u * blockDim.x < q1 ? __ldg(src + q + u * blockDim.x) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int u = 0; u < 8; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (int o = 16; o > 0; o >>= 1) x ^= __shfl_xor_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) ((u32*)p.out)[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = x;
}
