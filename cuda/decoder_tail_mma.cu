// decoder_tail_mma.cu — decoder tail on the int8 tensor cores (after common.cuh, mma.cuh):
// out[B,1,T,D] = sum_h y[B,h,T,L] . W[h*Lart + l, D], dequantized as (acc * w_scale) * a_scale.
//
// K = H*L is long and D narrow, so K is split: the chunks of BKW words of every head form one
// list, and CTA z of the grid (ceil(D/BN), ceil(M/128), splits) takes the z-th contiguous run
// of it. A (y words) and the weights both stream through a LB_MMA_STAGES-deep cp.async ring.
// With one split the CTA writes the output; otherwise it writes i32 partials [z][M][D] and
// decoder_mma_reduce sums them in split order: integer sums, the same bits on every run.
// Inputs that are not 16-byte aligned i8x4 rows (codes, f32, odd L) are first packed by
// mma_prep_a into zero-padded rows of round_up(Lw, 4) words.
// Glossary: mma.cuh, common.cuh.

#if defined(LB_MMA_SMALL)
// M <= 16 (any M for ternary2 weights): lb_mma_small, split = (head, K slice).
extern "C" __global__ void __launch_bounds__(LB_MS_THREADS) decoder_mma_small(LbProblem p) {
    lb_mma_small<LB_MODE, LB_UNS != 0, LB_MS_T2 != 0>(p);
}

#elif defined(LB_MMA_PREP)
#ifndef LB_MODE
#define LB_MODE LB_A_CODES
#endif
// dst[r][4q..4q+3] = words 4q..4q+3 of A row r (quantized for f32, packed for codes, copied
// for misaligned words); ldo = round_up(kw, 4) words per row.
extern "C" __global__ void __launch_bounds__(256) mma_prep_a(LbMma p, u32* dst, long long rows,
                                                             int ldo) {
    const float s = LB_MODE == LB_A_F32 ? lb_scale(p.scale_ptr, p.scale_param) : 0.0f;
    const int qpr = ldo / 4;
    const long long total = rows * qpr;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / qpr;
        const int q = (int)(i - r * qpr) * 4;
        const void* row = (const void*)((const char*)p.a + r * p.lda * 4);
        *(uint4*)(dst + r * ldo + q) =
            lb_a_word4<LB_MODE>(row, q, p.a_kvalid, s, p.fmt, p.a_vec != 0);
    }
}

#elif defined(LB_MMA_REDUCE)
// out[m][n] = dequant(sum over z ascending of partial[z][m][n]); out rows are ldc = ncols.
extern "C" __global__ void __launch_bounds__(256) decoder_mma_reduce(LbMma p, int splits) {
    const long long total = (long long)p.m_total * p.ncols;
    const float as = lb_scale(p.scale_ptr, p.scale_param);
    const long long stride = (long long)gridDim.x * blockDim.x;
    if (p.p_vec && p.c_vec) {
        for (long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 4; i < total;
             i += stride * 4) {
            int v[4] = {0, 0, 0, 0};
            for (int z = 0; z < splits; ++z) {
                const int4 q = __ldcs((const int4*)(p.partial + z * total + i));
                v[0] += q.x;
                v[1] += q.y;
                v[2] += q.z;
                v[3] += q.w;
            }
            const long long m = i / p.ncols, n = i - m * p.ncols;
            lb_mma_put4(p, nullptr, m * p.ldc + n, (int)n, v, as, true);
        }
    } else {
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
             i += stride) {
            int sum = 0;
            for (int z = 0; z < splits; ++z) sum += __ldcs(p.partial + z * total + i);
            const long long m = i / p.ncols, n = i - m * p.ncols;
            lb_store(p.out, m * p.ldc + n, lb_dequant(sum, p.w_scale, as, p.relu), p.out_dtype);
        }
    }
}

#else
template <bool UNS>
__device__ __forceinline__ void lb_decoder_mma(const LbMma& p) {
    extern __shared__ __align__(16) u32 lb_dyn_smem[];
    constexpr int LDA_S = LB_MMA_BKW + LB_MMA_APAD;
    constexpr int A_STAGE = LB_MMA_BM * LDA_S;
    constexpr int B_STAGE = LB_MMA_BKW * LB_MMA_LDB;
    u32* As = lb_dyn_smem;
    u32* Bs = lb_dyn_smem + LB_MMA_STAGES * A_STAGE;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / LB_MMA_WN, wn = warp % LB_MMA_WN;
    const int n0 = blockIdx.x * LB_MMA_BN, m0 = blockIdx.y * LB_MMA_BM;
    const int cph = (p.kw + LB_MMA_BKW - 1) / LB_MMA_BKW;
    const int total = p.heads * cph;
    const int c0 = (int)((long long)blockIdx.z * total / gridDim.z);
    const int c1 = (int)((long long)(blockIdx.z + 1) * total / gridDim.z);
    const int units = c1 - c0;
    const u32* A = (const u32*)p.a;

    // A pieces of this thread: BM rows x BKW/4 16-byte quads, rows fixed per thread.
    constexpr int QA = LB_MMA_BKW / 4;
    constexpr int PA = LB_MMA_BM * QA / LB_THREADS;
    long long a_base[PA];  // element offset of row m for head 0, or -1 past M
#pragma unroll
    for (int i = 0; i < PA; ++i) {
        const int idx = tid + i * LB_THREADS;
        const int m = m0 + idx / QA;
        if (m < p.m_total) {
            const int b = m / p.time, t = m - b * p.time;
            a_base[i] = ((long long)b * p.a_heads * p.time + t) * p.lda;
        } else {
            a_base[i] = -1;
        }
    }

    // Units are loaded in order, (head, chunk) tracked by counters. Interior chunks (every k
    // valid) skip the per-piece checks of A (rows past M are zero-filled) and, in lb_load_b,
    // of the weights.
    const int a_q = (tid % QA) * 4;  // this thread's A quad (the same in every piece)
    static_assert(LB_THREADS % QA == 0, "A quad per thread");
    int l_h = c0 / cph, l_kc = c0 - (c0 / cph) * cph;
    auto load = [&](int u) {
        if (u < units) {
            const int h = l_h, k0 = l_kc * LB_MMA_BKW;
            u32* as = As + (u % LB_MMA_STAGES) * A_STAGE;
            const long long hoff = (long long)h * p.time * p.lda;
            if (k0 + LB_MMA_BKW <= p.kw) {
#pragma unroll
                for (int i = 0; i < PA; ++i) {
                    const int r = (tid + i * LB_THREADS) / QA;
                    const bool ok = a_base[i] >= 0;
                    lb_cp16(as + r * LDA_S + a_q, ok ? A + a_base[i] + hoff + k0 + a_q : A,
                            ok ? 16 : 0);
                }
            } else {
#pragma unroll
                for (int i = 0; i < PA; ++i) {
                    const int idx = tid + i * LB_THREADS;
                    const int r = idx / QA, q = (idx % QA) * 4;
                    const int k = k0 + q;
                    const int valid = (a_base[i] >= 0 && k < p.kw) ? min(4, p.kw - k) * 4 : 0;
                    const u32* src = valid ? A + a_base[i] + hoff + k : A;
                    lb_cp16(as + r * LDA_S + q, src, valid);
                }
            }
            lb_load_b(p, Bs + (u % LB_MMA_STAGES) * B_STAGE,
                      p.b + (long long)h * p.b_head_rows * p.ldb, k0, n0);
            if (++l_kc == cph) {
                l_kc = 0;
                ++l_h;
            }
        }
        lb_commit();
    };

#pragma unroll
    for (int u = 0; u < LB_MMA_STAGES - 1; ++u) load(u);

    LbAcc acc;
    lb_acc_zero(acc);
    for (int u = 0; u < units; ++u) {
        lb_wait<LB_MMA_STAGES - 2>();
        __syncthreads();
        load(u + LB_MMA_STAGES - 1);
        lb_mma_chunk<UNS>(acc, As + (u % LB_MMA_STAGES) * A_STAGE + (wm * 64) * LDA_S, LDA_S,
                          Bs + (u % LB_MMA_STAGES) * B_STAGE + wn * LB_MMA_NI * 8, lane);
    }
    lb_wait<0>();

    const int col0 = n0 + wn * LB_MMA_NI * 8;
    if (gridDim.z > 1) {
        const long long zoff = (long long)blockIdx.z * p.m_total;
        lb_mma_store(p, acc, m0 + wm * 64, col0, p.partial, 0.0f,
                     [&](int m) { return (zoff + m) * p.ncols; });
    } else {
        const float as = lb_scale(p.scale_ptr, p.scale_param);
        lb_mma_store(p, acc, m0 + wm * 64, col0, (int*)nullptr, as,
                     [&](int m) { return (long long)m * p.ldc; });
    }
}

extern "C" __global__ void __launch_bounds__(LB_THREADS, 1) decoder_tail_mma(LbMma p) {
    lb_decoder_mma<LB_UNS != 0>(p);
}
#endif
