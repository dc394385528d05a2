// lowrank_mma.cu — low-rank projection on the int8 tensor cores (after common.cuh, mma.cuh):
// out[B,H,T,latent_out] = x[B,Hin,T,D] . W[H,D,N], dequantized as (acc * w_scale) * a_scale.
//
// Bound by writing the output (f32 at BDH sizes: 4 bytes per 512 int ops), so each CTA keeps
// its 128 rows of A (i8x4 words; codes and f32 inputs are packed once beforehand by
// mma_prep_a) in smem for the whole of K and walks a contiguous run of 128-column tiles over
// the flattened (head, column) space, streaming weight chunks through a LB_MMA_STAGES-deep
// cp.async ring; finished tiles go straight from registers to global memory with 16-byte
// streaming stores while the next tile's loads are in flight. Two CTAs per SM keep the
// stores of one overlapping the mma of the other.
//
// Grid: (CTAs per row block, ceil(M / 128)). Dynamic smem: A [128][kpw + 4] words, then the
// ring [STAGES][BKW][BN + 4] words. Glossary: mma.cuh, common.cuh.

#if defined(LB_MMA_SMALL)
// M <= 16 (any M for ternary2 weights, a row block of 16 per grid z): lb_mma_small, split = head.
extern "C" __global__ void __launch_bounds__(LB_MS_THREADS, 1) lowrank_mma_small(LbProblem p) {
    lb_mma_small<LB_MODE, LB_UNS != 0, LB_MS_T2 != 0>(p);
}
#else
#ifndef LB_OUT
#define LB_OUT 0  // output dtype of the interior epilogue: 0 f32, 1 f16, 2 bf16 (= p.out_dtype)
#endif
#ifndef LB_RELU
#define LB_RELU 0  // fused ReLU (= p.relu)
#endif

// The warp tile's outputs with the epilogue fixed at compile time, for tiles whose columns
// are all valid and 16-byte aligned (c_vec): no per-element branches. Rows >= M are skipped.
__device__ __forceinline__ void lb_lowrank_store(const LbMma& p, const LbAcc& acc, const int* s_row,
                                                 int r0, int m_left, long long hoff, int col0,
                                                 float a_scale) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            const int r = r0 + mi * 16 + rh * 8 + g;
            if (r >= m_left) continue;
            const long long o = s_row[r] + hoff + col0 + 4 * t;
#pragma unroll
            for (int h = 0; h < LB_MMA_NI / 4; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float f[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        f[j] = lb_dequant(acc[mi][4 * h + j][2 * rh + e], p.w_scale, a_scale, LB_RELU);
                    lb_stcs4(p.out, o + 32 * h + 16 * e, f, LB_OUT);
                }
        }
}

template <bool UNS>
__device__ __forceinline__ void lb_lowrank_mma(const LbMma& p) {
    extern __shared__ __align__(16) u32 lb_dyn_smem[];
    __shared__ int s_row[LB_MMA_BM];  // output offset of row m0 + r for head 0
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
    const float a_scale = lb_scale(p.scale_ptr, p.scale_param);
    const int head_stride = p.time * (int)p.ldc;  // out elements per head (< 2^31: checked)

    if (tid < LB_MMA_BM) {
        const int m = m0 + tid;
        int off = 0;
        if (m < p.m_total) {
            const int b = m / p.time, t = m - b * p.time;
            off = (b * p.o_heads * p.time + t) * (int)p.ldc;
        }
        s_row[tid] = off;
    }

    // Weight chunks are loaded in unit order (tile, then chunk), tracked by counters rather
    // than divisions.
    const int tile_cols = p.tiles_n * LB_MMA_BN;
    int l_u = 0, l_kc = 0, l_h = t_begin / p.tiles_n, l_n0 = (t_begin % p.tiles_n) * LB_MMA_BN;
    auto load_next = [&]() {
        if (l_u < units) {
            lb_load_b(p, Bs + (l_u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB,
                      p.b + (long long)l_h * p.b_head_rows * p.ldb, l_kc * LB_MMA_BKW, l_n0);
            ++l_u;
            if (++l_kc == nkc) {
                l_kc = 0;
                l_n0 += LB_MMA_BN;
                if (l_n0 == tile_cols) {
                    l_n0 = 0;
                    ++l_h;
                }
            }
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
            if (m < p.m_total && q < p.kw) {
                const int b = m / p.time, t = m - b * p.time;
                const long long row = ((long long)(b * p.a_heads + ah) * p.time + t) * p.lda;
                v = lb_a_word4<LB_A_PACKED>((const void*)((const u32*)p.a + row), q, p.a_kvalid,
                                            0.0f, 0, p.a_vec != 0);
            }
            *(uint4*)(As + r * lda_s + q) = v;
        }
    };

#pragma unroll
    for (int u = 0; u < LB_MMA_STAGES - 1; ++u) load_next();

    LbAcc acc;
    lb_acc_zero(acc);
    int cur_ah = -1;
    int h = t_begin / p.tiles_n, n0 = (t_begin % p.tiles_n) * LB_MMA_BN, kc = 0;
    const u32* a_warp = As + (wm * 64) * lda_s;
    for (int u = 0; u < units; ++u) {
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
        load_next();
        lb_mma_chunk<UNS>(acc, a_warp + kc * LB_MMA_BKW, lda_s,
                          Bs + (u % LB_MMA_STAGES) * LB_MMA_BKW * LB_MMA_LDB + wn * LB_MMA_NI * 8,
                          lane);
        if (++kc == nkc) {
            const int col0 = n0 + wn * LB_MMA_NI * 8;
            const long long hoff = (long long)h * head_stride;
            if (p.c_vec && n0 + LB_MMA_BN <= p.ncols) {
                lb_lowrank_store(p, acc, s_row, wm * 64, p.m_total - m0, hoff, col0, a_scale);
            } else {
                lb_mma_store(p, acc, m0 + wm * 64, col0, (int*)nullptr, a_scale,
                             [&](int m) { return (long long)s_row[m - m0] + hoff; });
            }
            lb_acc_zero(acc);
            kc = 0;
            n0 += LB_MMA_BN;
            if (n0 == tile_cols) {
                n0 = 0;
                ++h;
            }
        }
    }
    lb_wait<0>();
}

extern "C" __global__ void __launch_bounds__(LB_THREADS, 2) lowrank_mma(LbMma p) {
    lb_lowrank_mma<LB_UNS != 0>(p);
}
#endif
