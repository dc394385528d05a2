// rho.cu — rho state int8 block compression, blocks of 32 over the flattened [B,H,N,D] state.
//   rho_int8_pack    one warp per block: scale = max(max|v|/127, EPS), codes
//                    clamp(round(v/scale), +-127), 8 words per block (missing lanes zero)
//   rho_int8_unpack  v = code * scale
// Glossary: see common.cuh.

extern "C" __global__ void __launch_bounds__(256)
    rho_int8_pack(const float* v, long long n, u32* words, float* scales) {
    const int lane = threadIdx.x & 31;
    const long long nblocks = (n + 31) / 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long blk = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
         blk < nblocks; blk += warps) {
        long long i = blk * 32 + lane;
        float x = i < n ? v[i] : 0.0f;
        float m = fabsf(x);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float s = fmaxf(__fdiv_rn(m, 127.0f), LB_EPS);
        int c = i < n ? lb_code(x, s, LB_FMT_INT8) : 0;
        int c1 = __shfl_down_sync(0xffffffffu, c, 1);
        int c2 = __shfl_down_sync(0xffffffffu, c, 2);
        int c3 = __shfl_down_sync(0xffffffffu, c, 3);
        if ((lane & 3) == 0) words[blk * 8 + lane / 4] = lb_pack4(c, c1, c2, c3);
        if (lane == 0) scales[blk] = s;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    rho_int8_unpack(const u32* words, const float* scales, long long n, float* out) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        int c = (int)(signed char)((words[i / 4] >> (8 * (i % 4))) & 0xffu);
        out[i] = __fmul_rn((float)c, scales[i / 32]);
    }
}
