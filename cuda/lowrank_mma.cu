// lowrank_mma.cu — low-rank projection on the int8 tensor cores (after common.cuh, mma.cuh):
// out[B,H,T,latent_out] = x[B,Hin,T,D] . W[H,D,N], dequantized as (acc * w_scale) * a_scale.
//
// Bound by writing the output (f32 at BDH sizes: 4 bytes per 512 int ops), so each CTA keeps
// its 128 rows of A in smem for the whole of K (quantized on the way in for codes/f32 input)
// and walks a contiguous run of 128-column tiles over the flattened (head, column) space,
// streaming weight chunks through a LB_MMA_STAGES-deep cp.async ring; finished tiles go
// straight from registers to global memory with 16-byte streaming stores while the next
// tile's mma run. Two CTAs per SM keep the stores of one overlapping the mma of the other.
//
// Grid: (CTAs per row block, ceil(M / 128)). Dynamic smem: A [128][kpw + 4] words, then the
// ring [STAGES][BKW][BN + 8] words. LB_MODE: 0 packed words, 1 i32 codes, 2 f32.
// Glossary: mma.cuh, common.cuh.

#ifndef LB_MODE
#define LB_MODE LB_A_PACKED
#endif

__device__ __forceinline__ long long lbm_a_row(const LbMma& p, int m, int a_head) {
    int b = m / p.time, t = m - b * p.time;
    return ((long long)(b * p.a_heads + a_head) * p.time + t) * p.lda;
}

__device__ __forceinline__ long long lbm_out_row(const LbMma& p, int m, int h) {
    int b = m / p.time, t = m - b * p.time;
    return ((long long)(b * p.o_heads + h) * p.time + t) * p.ldc;
}

template <int MODE, bool UNS>
__device__ __forceinline__ void lb_lowrank_mma(const LbMma& p) {
    extern __shared__ __align__(16) u32 lb_dyn_smem[];
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
    const float s_in = MODE == LB_A_F32 ? lb_scale(p.scale_ptr, p.scale_param) : 0.0f;
    const float a_scale = lb_scale(p.scale_ptr, p.scale_param);

    auto load_b = [&](int u) {
        if (u < units) {
            const int tile = t_begin + u / nkc, kc = u % nkc;
            const int h = tile / p.tiles_n, n0 = (tile % p.tiles_n) * LB_MMA_BN;
            lb_load_b(p, Bs + (u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB,
                      p.b + (long long)h * p.b_head_rows * p.ldb, kc * LB_MMA_BKW, n0);
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
            if (m < p.m_total && q < p.kw)
                v = lb_a_word4<MODE>((const void*)((const char*)p.a + lbm_a_row(p, m, ah) * 4), q,
                                     p.a_kvalid, s_in, p.fmt, p.a_vec != 0);
            *(uint4*)(As + r * lda_s + q) = v;
        }
    };

#pragma unroll
    for (int u = 0; u < LB_MMA_STAGES - 1; ++u) load_b(u);

    LbAcc acc;
    lb_acc_zero(acc);
    int cur_ah = -1;
    for (int u = 0; u < units; ++u) {
        const int tile = t_begin + u / nkc, kc = u - (u / nkc) * nkc;
        const int h = tile / p.tiles_n;
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
        load_b(u + LB_MMA_STAGES - 1);
        lb_mma_chunk<UNS>(acc, As + (wm * 64) * lda_s + kc * LB_MMA_BKW, lda_s,
                          Bs + (u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB + wn * LB_MMA_NI * 8,
                          lane);
        if (kc == nkc - 1) {
            const int n0 = (tile % p.tiles_n) * LB_MMA_BN + wn * LB_MMA_NI * 8;
            lb_mma_store(p, acc, m0 + wm * 64, n0, (int*)nullptr, a_scale,
                         [&](int m) { return lbm_out_row(p, m, h); });
            lb_acc_zero(acc);
        }
    }
    lb_wait<0>();
}

#if LB_MODE == LB_A_PACKED
extern "C" __global__ void __launch_bounds__(LB_THREADS, 2) lowrank_mma_packed(LbMma p) {
    lb_lowrank_mma<LB_A_PACKED, false>(p);
}
#elif LB_MODE == LB_A_CODES
extern "C" __global__ void __launch_bounds__(LB_THREADS, 2) lowrank_mma_codes(LbMma p) {
    lb_lowrank_mma<LB_A_CODES, LB_UNS != 0>(p);
}
#elif LB_MODE == LB_A_F32
extern "C" __global__ void __launch_bounds__(LB_THREADS, 2) lowrank_mma_f32(LbMma p) {
    lb_lowrank_mma<LB_A_F32, LB_UNS != 0>(p);
}
#endif
