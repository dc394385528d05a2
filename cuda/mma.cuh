// mma.cuh — the int8 tensor-core core shared by lowrank_mma.cu and decoder_tail_mma.cu
// (the Rust loader puts it after common.cuh and before the op's file). sm_80+ only.
//
// Glossary (see also common.cuh)
//   mma      mma.sync.aligned.m16n8k32.row.col.s32.{s8|u8}.s8.s32: C[16x8] += A[16x32] B[32x8]
//   g, t     lane / 4 and lane % 4, the PTX fragment coordinates. A "word" is 4 consecutive k
//            of one row (A) or one column (B), i.e. exactly one of our i8x4 words:
//              A regs (row, k word): (g, t) (g+8, t) (g, t+4) (g+8, t+4)
//              B regs (col, k word): (g, t) (g, t+4)
//              C regs (row, col):    (g, 2t) (g, 2t+1) (g+8, 2t) (g+8, 2t+1)
//   As       A tile in smem, [row][k word], rows padded by 4 words (16 B): ldmatrix's 8 row
//            addresses then fall in 8 distinct 16-byte bank groups
//   Bs       B tile in smem as the weights lie, [k word][col], rows padded by 8 words: the
//            fragment loads (8 cols x 4 k words per instruction) hit 32 distinct banks
//   chunk    LB_MMA_BKW k words (4·BKW k), the unit of the cp.async pipeline
//   warp tile 64 rows x (8·LB_MMA_NI) cols; warps 2 (rows) x 4 (cols): CTA tile 128 x 32·NI
//   UNS      A bytes are unsigned (uint8pos codes up to 255): mma .u8.s8
//
// Exactness: K padding (rows, columns or k past the valid range) is zero-filled, so every
// accumulator is the exact i32 dot product; out = (acc * w_scale) * a_scale as in common.cuh.

#ifndef LB_MMA_BKW
#define LB_MMA_BKW 32
#endif
#ifndef LB_MMA_NI
#define LB_MMA_NI 4
#endif
#ifndef LB_MMA_STAGES
#define LB_MMA_STAGES 3
#endif
#ifndef LB_THREADS
#define LB_THREADS 256
#endif
#ifndef LB_UNS
#define LB_UNS 0
#endif

#define LB_MMA_WM 2
#define LB_MMA_WN 4
#define LB_MMA_BM (64 * LB_MMA_WM)
#define LB_MMA_BN (8 * LB_MMA_NI * LB_MMA_WN)
#define LB_MMA_APAD 4
#define LB_MMA_BPAD 8
#define LB_MMA_LDB (LB_MMA_BN + LB_MMA_BPAD)

// Mirror of `LbMma` in src/backend/cuda/mma.rs (same field order and types).
struct LbMma {
    const void* a;          // activations: words (decoder, lowrank packed), i32 codes or f32
    const u32* b;           // weight words
    void* out;              // f32 or f16/bf16 bits
    int* partial;           // decoder split-K i32 partials [splits][M][ncols], or null
    const float* scale_ptr; // device activation scale, or null (scale_param)
    long long lda;          // A row stride in its unit (words, or elements for codes/f32)
    long long a_kvalid;     // valid A length per row, same unit
    long long ldb;          // words per weight row (N or D)
    long long ldc;          // output row stride (latent_out or D)
    float scale_param;
    float w_scale;
    int fmt;
    int relu;
    int out_dtype;          // 0 f32, 1 f16, 2 bf16
    int m_total;            // M = B*T
    int time;
    int heads;
    int a_heads;            // Hin (lowrank) or H (decoder)
    int o_heads;            // H (lowrank) or 1 (decoder)
    int ncols;              // output columns (latent_out or D)
    int bcols;              // valid weight columns (N or D)
    int kw;                 // k words per head (Kw or Lw)
    int kpw;                // lowrank: kw rounded up to a chunk (smem A row length)
    int b_head_rows;        // weight rows per head (Kw or Lartw)
    int tiles_n;            // lowrank: column tiles per head
    int a_vec;              // 16-byte A loads legal (lowrank)
    int b_vec;              // 16-byte weight cp.async legal (ldb % 4 == 0, aligned)
    int c_vec;              // vector output stores legal (ldc % 4 == 0, aligned)
    int p_vec;              // vector partial stores legal (ncols % 4 == 0)
};

__device__ __forceinline__ unsigned lb_smem(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// cp.async of 16 (or 4) bytes; bytes past `valid` are zero-filled (nothing is read when
// `valid` is 0, and `src` is then any mapped address).
__device__ __forceinline__ void lb_cp16(u32* dst, const void* src, int valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(lb_smem(dst)), "l"(src),
                 "r"(valid)
                 : "memory");
}
__device__ __forceinline__ void lb_cp4(u32* dst, const void* src, int valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(lb_smem(dst)), "l"(src),
                 "r"(valid)
                 : "memory");
}
__device__ __forceinline__ void lb_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void lb_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void lb_ldsm4(u32 (&r)[4], const u32* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lb_smem(p))
                 : "memory");
}

template <bool UNS>
__device__ __forceinline__ void lb_mma(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (UNS) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
            "{%8, %9}, {%0, %1, %2, %3};\n"
            : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
            "{%8, %9}, {%0, %1, %2, %3};\n"
            : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

typedef int LbAcc[4][LB_MMA_NI][4];

__device__ __forceinline__ void lb_acc_zero(LbAcc& acc) {
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < LB_MMA_NI; ++ni)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0;
}

// One chunk (BKW k words = BKW/8 mma k-steps) of the warp tile. `as` is the warp's first A
// row at the chunk's first word (row stride `lda_s` words); `bs` the chunk's first k word at
// the warp's first column (row stride LB_MMA_LDB).
template <bool UNS>
__device__ __forceinline__ void lb_mma_chunk(LbAcc& acc, const u32* as, int lda_s, const u32* bs,
                                             int lane) {
    const int g = lane >> 2, t = lane & 3;
    // ldmatrix x4: lanes 0-7 rows 0-7 words 0-3 (a0), 8-15 rows 8-15 (a1), 16-23 rows 0-7
    // words 4-7 (a2), 24-31 rows 8-15 words 4-7 (a3).
    const u32* a_lane = as + (lane & 15) * lda_s + (lane >> 4) * 4;
    const u32* b_lane = bs + t * LB_MMA_LDB + g;
#pragma unroll
    for (int s = 0; s < LB_MMA_BKW / 8; ++s) {
        u32 af[4][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) lb_ldsm4(af[mi], a_lane + mi * 16 * lda_s + s * 8);
        u32 bf[LB_MMA_NI][2];
#pragma unroll
        for (int ni = 0; ni < LB_MMA_NI; ++ni) {
            bf[ni][0] = b_lane[(s * 8) * LB_MMA_LDB + ni * 8];
            bf[ni][1] = b_lane[(s * 8 + 4) * LB_MMA_LDB + ni * 8];
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < LB_MMA_NI; ++ni) lb_mma<UNS>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
}

// Queues the cp.async of one weight chunk: k words [k0, k0 + BKW) of the head block `b`
// (rows past `kw` zero), columns [n0, n0 + BN) (columns past `bcols` zero), into `dst`.
__device__ __forceinline__ void lb_load_b(const LbMma& p, u32* dst, const u32* b, int k0, int n0) {
    const int tid = threadIdx.x;
    if (p.b_vec) {
        constexpr int Q = LB_MMA_BN / 4;  // 16-byte pieces per row
#pragma unroll
        for (int i = 0; i < LB_MMA_BKW * Q / LB_THREADS; ++i) {
            const int idx = tid + i * LB_THREADS;
            const int r = idx / Q, c = (idx % Q) * 4;
            const int k = k0 + r, n = n0 + c;
            const int valid = (k < p.kw && n < p.bcols) ? min(4, p.bcols - n) * 4 : 0;
            const u32* src = valid ? b + (long long)k * p.ldb + n : p.b;
            lb_cp16(dst + r * LB_MMA_LDB + c, src, valid);
        }
    } else {
#pragma unroll 4
        for (int i = 0; i < LB_MMA_BKW * LB_MMA_BN / LB_THREADS; ++i) {
            const int idx = tid + i * LB_THREADS;
            const int r = idx / LB_MMA_BN, c = idx % LB_MMA_BN;
            const int k = k0 + r, n = n0 + c;
            const int valid = (k < p.kw && n < p.bcols) ? 4 : 0;
            const u32* src = valid ? b + (long long)k * p.ldb + n : p.b;
            lb_cp4(dst + r * LB_MMA_LDB + c, src, valid);
        }
    }
}

// Writes 4 consecutive outputs (row, col..col+3): dequantized into `out`, or as i32 into
// `part` (row stride ncols) when it is not null.
__device__ __forceinline__ void lb_mma_put4(const LbMma& p, int* part, long long orow, int col,
                                            const int (&v)[4], float a_scale) {
    if (part != nullptr) {
        int* dst = part + orow + col;
        if (p.p_vec && col + 4 <= p.ncols) {
            *(int4*)dst = make_int4(v[0], v[1], v[2], v[3]);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (col + j < p.ncols) dst[j] = v[j];
        }
        return;
    }
    float f[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) f[j] = lb_dequant(v[j], p.w_scale, a_scale, p.relu);
    const long long o = orow + col;
    if (p.c_vec && col + 4 <= p.ncols) {
        if (p.out_dtype == 0) {
            __stcs((float4*)((float*)p.out + o), make_float4(f[0], f[1], f[2], f[3]));
        } else {
            unsigned short h[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (p.out_dtype == 1) {
                    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h[j]) : "f"(f[j]));
                } else {
                    h[j] = lb_bf16_bits(f[j]);
                }
            }
            __stcs((uint2*)((unsigned short*)p.out + o),
                   make_uint2((u32)h[0] | ((u32)h[1] << 16), (u32)h[2] | ((u32)h[3] << 16)));
        }
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (col + j < p.ncols) lb_store(p.out, o + j, f[j], p.out_dtype);
    }
}

// Stores the warp tile whose first row is `row0` (tile-relative rows are m = row0 + 0..63) and
// first column `col0`. `orow(m)` gives the element offset of output row m. Lanes t, t^1 swap
// half of their column pairs so that each holds 4 consecutive columns (16-byte stores).
template <typename ORow>
__device__ __forceinline__ void lb_mma_store(const LbMma& p, const LbAcc& acc, int row0, int col0,
                                             int* part, float a_scale, ORow orow) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bool odd = t & 1;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int m = row0 + mi * 16 + hf * 8 + g;
            const long long o = m < p.m_total ? orow(m) : 0;
#pragma unroll
            for (int nj = 0; nj < LB_MMA_NI; nj += 2) {
                const int* e = &acc[mi][nj][2 * hf];
                const int* d = &acc[mi][nj + 1][2 * hf];
                const int s0 = odd ? e[0] : d[0], s1 = odd ? e[1] : d[1];
                const int r0 = __shfl_xor_sync(0xffffffffu, s0, 1);
                const int r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
                int v[4];
                int col;
                if (odd) {
                    v[0] = r0; v[1] = r1; v[2] = d[0]; v[3] = d[1];
                    col = col0 + (nj + 1) * 8 + 2 * t - 2;
                } else {
                    v[0] = e[0]; v[1] = e[1]; v[2] = r0; v[3] = r1;
                    col = col0 + nj * 8 + 2 * t;
                }
                if (m < p.m_total) lb_mma_put4(p, part, o, col, v, a_scale);
            }
        }
}
