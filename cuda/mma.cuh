// mma.cuh — the int8 tensor-core core shared by lowrank_mma.cu and decoder_tail_mma.cu
// (the Rust loader puts it after common.cuh and before the op's file). sm_80+ only.
//
// Glossary (see also common.cuh)
//   mma      mma.sync.aligned.m16n8k32.row.col.s32.{s8|u8}.s8.s32: C[16x8] += A[16x32] B[32x8]
//   g, t     lane / 4 and lane % 4, the PTX fragment coordinates. A "word" is 4 consecutive k
//            of one row (A) or one column (B), i.e. exactly one of our i8x4 words:
//              A regs (row, k word): (g, t) (g+8, t) (g, t+4) (g+8, t+4)
//              B regs (col j, k word): (g, t) (g, t+4)
//              C regs (row, col j):    (g, 2t) (g, 2t+1) (g+8, 2t) (g+8, 2t+1)
//   col      fragment column j of n8 fragment ni is warp-tile column lb_col(j, ni):
//            32*(ni/4) + (j even ? 2j : 2j + 14) + ni%4. Any bijection is exact (B and C use the
//            same one); this one gives each thread 4 consecutive B words per k word (one
//            16-byte smem load for 4 fragments) and 4 + 4 consecutive outputs per row (16-byte
//            stores, and the 4 lanes of a row cover 64 contiguous bytes per store)
//   As       A tile in smem, [row][k word], rows padded by 4 words (16 B): ldmatrix's 8 row
//            addresses then fall in 8 distinct 16-byte bank groups
//   Bs       B tile in smem as the weights lie, [k word][col], rows padded by 4 words: the
//            16-byte fragment loads of each quarter warp hit 8 distinct 16-byte bank groups
//   chunk    LB_MMA_BKW k words (4·BKW k), the unit of the cp.async pipeline
//   warp tile 64 rows x (8·LB_MMA_NI) cols; warps 2 (rows) x 4 (cols): CTA tile 128 x 32·NI
//   UNS      A bytes are unsigned (uint8pos codes up to 255): mma .u8.s8
//   T2       ternary weights, 2 bits each, in the fragment layout of src/pack.rs
//            (`pack_ternary2_fragments`): t2 row R of a head holds k words 16*(R/4) + R%4 + 4j,
//            j = 0..3, of every column, lane b of k word slot j at bits 8b+2j (stored as v+1);
//            lb_t2_expand turns a slot into an i8x4 word, lb_t2_field into its u8x4 fields
//            (weight + 1, which the small-M kernel multiplies as they lie). Thread t of an
//            m16n8k32 (or wgmma k32) fragment reads k words t and t + 4 of each 8: one t2 word
//            is its slots of two k-steps
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
#define LB_MMA_BPAD 4
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
    int a_vec;              // 16-byte A loads legal
    int b_vec;              // 16-byte weight cp.async legal (ldb % 4 == 0, aligned)
    int c_vec;              // vector output stores legal (ldc % 4 == 0, aligned)
    int p_vec;              // vector partial stores legal (ncols % 4 == 0)
    int pdl;                // in a programmatic chain: 0 no; else lb_pdl_chain's 1 or 2
};
static_assert(sizeof(LbMma) == 160, "LbMma: the layout of mma.rs");

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

// A bytes unsigned with UNS, B bytes unsigned with BU.
#define LB_MMA_ASM(AT, BT)                                                                        \
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32." AT "." BT                               \
                 ".s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"          \
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <bool UNS, bool BU = false>
__device__ __forceinline__ void lb_mma(int (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if (UNS && BU) LB_MMA_ASM("u8", "u8");
    else if (UNS) LB_MMA_ASM("u8", "s8");
    else if (BU) LB_MMA_ASM("s8", "u8");
    else LB_MMA_ASM("s8", "s8");
}
#undef LB_MMA_ASM

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
    // Columns lb_col(g, 4h + q), q = 0..3: 4 consecutive words at 32h + 2g + 14 (g odd).
    const u32* b_lane = bs + t * LB_MMA_LDB + 2 * g + (g & 1) * 14;
#pragma unroll
    for (int s = 0; s < LB_MMA_BKW / 8; ++s) {
        u32 af[4][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) lb_ldsm4(af[mi], a_lane + mi * 16 * lda_s + s * 8);
        u32 bf[LB_MMA_NI][2];
#pragma unroll
        for (int h = 0; h < LB_MMA_NI / 4; ++h) {
            const uint4 lo = *(const uint4*)(b_lane + (s * 8) * LB_MMA_LDB + 32 * h);
            const uint4 hi = *(const uint4*)(b_lane + (s * 8 + 4) * LB_MMA_LDB + 32 * h);
            bf[4 * h + 0][0] = lo.x;
            bf[4 * h + 1][0] = lo.y;
            bf[4 * h + 2][0] = lo.z;
            bf[4 * h + 3][0] = lo.w;
            bf[4 * h + 0][1] = hi.x;
            bf[4 * h + 1][1] = hi.y;
            bf[4 * h + 2][1] = hi.z;
            bf[4 * h + 3][1] = hi.w;
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < LB_MMA_NI; ++ni) lb_mma<UNS>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
}

// Queues the cp.async of one weight chunk: k words [k0, k0 + BKW) of the head block `b`
// (rows past `kw` zero), columns [n0, n0 + BN) (columns past `bcols` zero), into `dst`.
// Interior chunks (every k and column valid, 16-byte legal) skip the per-piece checks: a
// thread's pieces are rows tid/Q + RPP*i, columns 4*(tid%Q)..+3.
__device__ __forceinline__ void lb_load_b(const LbMma& p, u32* dst, const u32* b, int k0, int n0) {
    const int tid = threadIdx.x;
    if (p.b_vec) {
        constexpr int Q = LB_MMA_BN / 4;  // 16-byte pieces per row
        constexpr int RPP = LB_THREADS / Q;  // rows per pass of the CTA
        static_assert(LB_THREADS % Q == 0 && LB_MMA_BKW % RPP == 0, "whole pieces per thread");
        if (k0 + LB_MMA_BKW <= p.kw && n0 + LB_MMA_BN <= p.bcols) {
            const int r = tid / Q, c = (tid % Q) * 4;
            const u32* src = b + (long long)(k0 + r) * p.ldb + n0 + c;
            u32* d = dst + r * LB_MMA_LDB + c;
#pragma unroll
            for (int i = 0; i < LB_MMA_BKW / RPP; ++i)
                lb_cp16(d + i * RPP * LB_MMA_LDB, src + i * RPP * p.ldb, 16);
            return;
        }
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

// Writes 4 consecutive outputs (element offset o = row offset + col; column col..col+3):
// dequantized into `out`, or as i32 into `part` when it is not null. `vec`: all 4 columns are
// valid and 16-byte (8-byte for 16-bit outputs) stores are legal.
__device__ __forceinline__ void lb_mma_put4(const LbMma& p, int* part, long long o, int col,
                                            const int (&v)[4], float a_scale, bool vec) {
    if (part != nullptr) {
        int* dst = part + o;
        if (vec) {
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
    if (vec) {
        lb_stcs4(p.out, o, f, p.out_dtype);
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (col + j < p.ncols) lb_store(p.out, o + j, f[j], p.out_dtype);
    }
}

// Narrow split partials (decoder_wgmma with LB_DW_P16, decoder_mma_reduce with LB_RED16): the
// sum s of split z at element e is the i16 s where |s| <= 32767, else LB_P16_WIDE, and then s
// itself is the i32 wide[e] of the array after the `count` i16, at the next 16-byte boundary.
#define LB_P16_WIDE (-32768)
__device__ __forceinline__ bool lb_fits16(int v) { return (unsigned)(v + 32767) <= 65534u; }
__device__ __forceinline__ unsigned lb_p16(int v) {
    return lb_fits16(v) ? (unsigned)v & 0xffffu : 0x8000u;
}
__device__ __forceinline__ int* lb_p16_wide(int* partial, long long count) {
    return (int*)((char*)partial + ((count * 2 + 15) & ~15LL));
}
// Does the i16 field h (the low 16 bits) hold the marker (the sum is in the wide array)?
__device__ __forceinline__ bool lb_p16_marked(unsigned h) { return (h & 0xffffu) == 0x8000u; }
// Split z's sum at element e from its i16 field h. (The marker test on the sign-extended
// field, as measured on the card; written through lb_p16_marked, ptxas schedules the
// reduction differently.)
__device__ __forceinline__ int lb_p16_get(unsigned h, const int* wide, long long e) {
    const int s = (short)(h & 0xffffu);
    return s == LB_P16_WIDE ? __ldcs(wide + e) : s;
}

// Stores the warp tile whose first row is `row0` (rows row0 + 0..63) and first column `col0`.
// `rowoff(m)` is the element offset of row m (m < M) in `out`, or in `part` when not null.
// Thread (g, t) holds, per row and per 32 columns, columns 4t..4t+3 and 16+4t..16+4t+3.
template <typename RowOff>
__device__ __forceinline__ void lb_mma_store(const LbMma& p, const LbAcc& acc, int row0, int col0,
                                             int* part, float a_scale, RowOff rowoff) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bool vec_ok = part != nullptr ? p.p_vec != 0 : p.c_vec != 0;
    const bool interior = vec_ok && col0 + 8 * LB_MMA_NI <= p.ncols;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            const int m = row0 + mi * 16 + rh * 8 + g;
            if (m >= p.m_total) continue;
            const long long o = rowoff(m);
#pragma unroll
            for (int h = 0; h < LB_MMA_NI / 4; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = col0 + 32 * h + 16 * e + 4 * t;
                    const int v[4] = {acc[mi][4 * h + 0][2 * rh + e], acc[mi][4 * h + 1][2 * rh + e],
                                      acc[mi][4 * h + 2][2 * rh + e], acc[mi][4 * h + 3][2 * rh + e]};
                    const bool vec = interior || (vec_ok && col + 4 <= p.ncols);
                    lb_mma_put4(p, part, o + col, col, v, a_scale, vec);
                }
        }
}

// u8x4 word of the fields of slot j of a t2 word: weight + 1 per byte (0..2).
__device__ __forceinline__ u32 lb_t2_field(u32 x, int j) { return (x >> (2 * j)) & 0x03030303u; }
// i8x4 word of slot j of a t2 word: per byte ((field + 0x7f) ^ 0x80) = field - 1, no carries.
__device__ __forceinline__ u32 lb_t2_expand(u32 x, int j) {
    return (lb_t2_field(x, j) + 0x7f7f7f7fu) ^ 0x80808080u;
}
// The tensor-core A register of slot j of a t2 word: its i8x4 weights, or with FIELDS their
// u8 fields w + 1 (the caller then subtracts the sums of the other operand, lb_sum16).
template <bool FIELDS>
__device__ __forceinline__ u32 lb_t2_areg(u32 x, int j) {
    return FIELDS ? lb_t2_field(x, j) : lb_t2_expand(x, j);
}
// acc plus the sum of the 16 bytes of y (s8 lanes, u8 when UNS): dp4a by ones.
template <bool UNS>
__device__ __forceinline__ int lb_sum16(uint4 y, int acc) {
    acc = dot4<UNS>(y.x, 0x01010101u, acc);
    acc = dot4<UNS>(y.y, 0x01010101u, acc);
    acc = dot4<UNS>(y.z, 0x01010101u, acc);
    return dot4<UNS>(y.w, 0x01010101u, acc);
}

// ---- warpgroup mma (sm_90a; modules compiled with LB_WGMMA) --------------------------------
#if defined(LB_WGMMA)
// Descriptor of a 128-byte-swizzled K-major operand at `smem` (1024-byte aligned atoms):
// start address, LBO 16 (unused for this layout), SBO 1024, swizzle mode 1 (128 bytes).
__device__ __forceinline__ u64 lb_wg_desc(const void* smem) {
    return (u64)((lb_smem(smem) & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) |
           ((u64)1 << 62);
}

// Makes this thread's generic-proxy smem writes (cp.async included) visible to wgmma.
__device__ __forceinline__ void lb_fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void lb_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void lb_wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void lb_wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// mbarriers in shared memory (CTA scope): init with the arrivals a phase takes; arrive
// (release); wait until the phase of `parity` has completed (acquire).
__device__ __forceinline__ void lb_mbar_init(u64* bar, unsigned arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(lb_smem(bar)), "r"(arrivals)
                 : "memory");
}
__device__ __forceinline__ void lb_mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(lb_smem(bar))
                 : "memory");
}
__device__ __forceinline__ void lb_mbar_wait(u64* bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n"
            " mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
            " selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(lb_smem(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

// arrive on `bar` and add `bytes` to the transfers its current phase waits for.
__device__ __forceinline__ void lb_mbar_expect(u64* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                     lb_smem(bar)),
                 "r"(bytes)
                 : "memory");
}
// A tensor map (CUtensorMap, cuTensorMapEncodeTiled on the host), passed as a
// __grid_constant__ kernel parameter; mirror of `LbTmap` in src/backend/cuda/mma.rs.
struct __align__(64) LbTmap {
    u64 v[16];
};
static_assert(sizeof(LbTmap) == 128, "LbTmap: the layout of mma.rs");
// TMA: the box of `map` at (c0, c1, c2, c3) into smem at dst (its bytes complete on `bar`;
// coordinates past the tensor read as zeros).
__device__ __forceinline__ void lb_tma_4d(void* dst, const LbTmap* map, int c0, int c1, int c2,
                                         int c3, u64* bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(lb_smem(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(lb_smem(bar))
        : "memory");
}
// Bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) into smem at dst,
// completing on `bar`.
__device__ __forceinline__ void lb_bulk(void* dst, const void* src, unsigned bytes, u64* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
        ::"r"(lb_smem(dst)), "l"(src), "r"(bytes), "r"(lb_smem(bar))
        : "memory");
}

#define LB_R4(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3])
#define LB_R16(i) LB_R4(i), LB_R4(i + 4), LB_R4(i + 8), LB_R4(i + 12)
#define LB_R64(i) LB_R16(i), LB_R16(i + 16), LB_R16(i + 32), LB_R16(i + 48)
#define LB_WG_D \
    "{%0, %1, %2, %3, %4, %5, %6, %7," \
    "%8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23," \
    "%24, %25, %26, %27, %28, %29, %30, %31," \
    "%32, %33, %34, %35, %36, %37, %38, %39," \
    "%40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55," \
    "%56, %57, %58, %59, %60, %61, %62, %63}"

// D[64x128] (+)= A[64x32] . B[128x32]^T for one k32 step, both operands in smem (`da`, `db`);
// `acc` 0 on a tile's first step (D is then overwritten). A is u8 when UNS.
#define LB_WGMMA_ASM(TY)                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                \
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32." TY ".s8 " LB_WG_D            \
                 ", %64, %65, p;\n}\n"                                                       \
                 : LB_R64(0)                                                                 \
                 : "l"(da), "l"(db), "r"(acc)                                                \
                 : "memory")
template <bool UNS>
__device__ __forceinline__ void lb_wgmma(int (&d)[64], u64 da, u64 db, int acc) {
    if (UNS) {
        LB_WGMMA_ASM("u8");
    } else {
        LB_WGMMA_ASM("s8");
    }
}

// D[64x64] (+)= A[64x32] . B[64x32]^T into d[32 H ..][32]: half H of an m64n128 tile's
// registers (the same rows and columns as there, B from its 64 rows 64 H..).
#define LB_R32(i) LB_R16(i), LB_R16(i + 16)
#define LB_WG_D32 \
    "{%0, %1, %2, %3, %4, %5, %6, %7," \
    "%8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23," \
    "%24, %25, %26, %27, %28, %29, %30, %31}"
#define LB_WGMMA64_ASM(TY)                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                \
                 "wgmma.mma_async.sync.aligned.m64n64k32.s32." TY ".s8 " LB_WG_D32            \
                 ", %32, %33, p;\n}\n"                                                       \
                 : LB_R32(32 * H)                                                            \
                 : "l"(da), "l"(db), "r"(acc)                                                \
                 : "memory")
template <bool UNS, int H>
__device__ __forceinline__ void lb_wgmma_n64(int (&d)[64], u64 da, u64 db, int acc) {
    if (UNS) {
        LB_WGMMA64_ASM("u8");
    } else {
        LB_WGMMA64_ASM("s8");
    }
}

// The K steps of one tile, in 16-byte descriptor units from `da` and `db` (operands in
// 128-byte planes of a16 / b16 units, four k32 steps per plane): into all of d (H = 2,
// m64n128) or its half H (m64n64).
template <bool UNS, int H, int NP>
__device__ __forceinline__ void lb_wgmma_steps(int (&d)[64], u64 da, u64 db, int a16, int b16) {
#pragma unroll
    for (int k = 0; k < 4 * NP; ++k) {
        const u64 a = da + (u64)((k >> 2) * a16 + (k & 3) * 2);
        const u64 b = db + (u64)((k >> 2) * b16 + (k & 3) * 2);
        if constexpr (H == 2) {
            lb_wgmma<UNS>(d, a, b, k > 0);
        } else {
            lb_wgmma_n64<UNS, H>(d, a, b, k > 0);
        }
    }
}

// The same with A (s8, or u8 when AU) from registers: a[0..3] = (row g, word t), (g+8, t),
// (g, t+4), (g+8, t+4) of the warp's 16 rows (the mma.sync A fragment); B is u8 when UNS.
// D[64 x N] (N = 128 or 64) into d[N / 2]. The registers must stay unchanged until the wgmma
// has completed (wgmma.wait_group). ACC, A, DB: the operand numbers after the N / 2 outputs.
#define LB_WGMMA_RS_ASM(ATY, TY, N, DL, ACC, A, DB, ...)                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACC ", 0;\n"                            \
                 "wgmma.mma_async.sync.aligned.m64n" N "k32.s32." ATY "." TY " " DL ", " A    \
                 ", " DB ", p;\n}\n"                                                          \
                 : __VA_ARGS__                                                               \
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(acc), "l"(db)                     \
                 : "memory")
#define LB_WGMMA_RS128(ATY, TY) \
    LB_WGMMA_RS_ASM(ATY, TY, "128", LB_WG_D, "%68", "{%64, %65, %66, %67}", "%69", LB_R64(0))
#define LB_WGMMA_RS64(ATY, TY) \
    LB_WGMMA_RS_ASM(ATY, TY, "64", LB_WG_D32, "%36", "{%32, %33, %34, %35}", "%37", LB_R32(0))
#define LB_WGMMA_RS_TY(ATY)            \
    if constexpr (N == 128) {          \
        if (UNS) {                     \
            LB_WGMMA_RS128(ATY, "u8"); \
        } else {                       \
            LB_WGMMA_RS128(ATY, "s8"); \
        }                              \
    } else {                           \
        if (UNS) {                     \
            LB_WGMMA_RS64(ATY, "u8");  \
        } else {                       \
            LB_WGMMA_RS64(ATY, "s8");  \
        }                              \
    }
template <bool UNS, int N, bool AU = false>
__device__ __forceinline__ void lb_wgmma_rs(int (&d)[N / 2], u32 a0, u32 a1, u32 a2, u32 a3,
                                            u64 db, int acc) {
    static_assert(N == 128 || N == 64, "lb_wgmma_rs: n is 128 or 64");
    if constexpr (AU) {
        LB_WGMMA_RS_TY("u8")
    } else {
        LB_WGMMA_RS_TY("s8")
    }
}

// ---- thread-block clusters (sm_90) ---------------------------------------------------------
// Every thread of every CTA of the cluster; release / acquire across the cluster.
__device__ __forceinline__ void lb_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                     : "memory");
}
__device__ __forceinline__ unsigned lb_cluster_ctaid_z() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctaid.z;\n" : "=r"(r));
    return r;
}
// The 16 bytes at shared-window offset `addr` of cluster CTA `rank`'s shared memory.
__device__ __forceinline__ int4 lb_ld_dsmem4(unsigned addr, unsigned rank) {
    int4 v;
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %4, %5;\n"
                 "ld.shared::cluster.v4.s32 {%0, %1, %2, %3}, [ra];\n}\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr), "r"(rank)
                 : "memory");
    return v;
}
#endif  // LB_WGMMA

// ---- small M on the tensor cores ----------------------------------------------------------
#if defined(LB_MMA_SMALL)
// Rows m0..m0+15 (grid z = row block of 16) are one m16 A fragment, staged in smem for the
// CTA's K range. A warp owns 32 columns (4 n8 fragments in lb_col order) x a K slice of at
// most LB_MS_KSW words; a CTA is LB_MS_CW column warps x LB_MS_KW k-warps sharing that A.
// Every weight word is loaded once, straight into registers, a batch of 64 k words (4 "pairs"
// of two k-steps) at a time; the first batch is in flight while A is staged. Grid: (column
// tiles of 32*CW, splits, row blocks); lowrank split = head, decoder split = head x K slice.
//   T2    ternary2 weights (glossary above): a thread's 16-byte load (4 columns of one t2
//         row) is its B registers for two k-steps of its four fragments.
// Decoder split-K: the k-warps are summed in smem, element-parallel over the valid rows; the
// splits by integer atomics into the zeroed [M][D] accumulator, lb_split_finish writing the
// output (the same bits every run). (Summing the splits of a thread-block cluster through
// distributed shared memory first measured slower on the H200 at every M ≤ 16.)
// A computed scale of f32 input: LB_MS_SCALE_BLOCKS, every CTA sums all of x itself (the
// low-rank projection); LB_MS_GRID_SCALE, the CTAs (all resident) split absmean_scale's
// blocks and meet at a grid barrier (the decoder, lb_grid_scale in common.cuh).
#ifndef LB_MS_CW
#define LB_MS_CW 4
#endif
#ifndef LB_MS_KW
#define LB_MS_KW 1
#endif
#ifndef LB_MS_KSW
#define LB_MS_KSW 64
#endif
#ifndef LB_MS_T2
#define LB_MS_T2 0
#endif
#define LB_MS_THREADS (32 * LB_MS_CW * LB_MS_KW)
#define LB_MS_COLS (32 * LB_MS_CW)
#define LB_MS_LDA (LB_MS_KSW * LB_MS_KW + 4)  // A row stride in words (16-byte bank spread)
// Dynamic smem bytes: 16 * LB_MS_LDA * 4 (mirrored by small_smem in src/backend/cuda/mma.rs).
// k-step pairs (16 k words each) per register batch (1 or 4 16-byte loads each), 2 or 4:
// a k-warp's loads of one batch are in flight together (set by the host: SmallMmaDecoder).
#ifndef LB_MS_PAIRS
#define LB_MS_PAIRS 4
#endif

template <int MODE, bool UNS, bool T2>
__device__ __forceinline__ void lb_mma_small(const LbProblem& p) {
    constexpr int NJ = T2 ? 1 : 4;  // 16-byte loads per thread per pair
    // Dynamic smem: A [16][LDA] words; after the mma the k-warp partials overlay it.
    extern __shared__ __align__(16) u32 lb_dyn_smem[];
    u32* As = lb_dyn_smem;
    int* red = (int*)lb_dyn_smem;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wc = warp % LB_MS_CW, wk = warp / LB_MS_CW;
    const int tile0 = blockIdx.x * LB_MS_COLS;
    const int c0 = tile0 + wc * 32 + 2 * g + (g & 1) * 14;  // this thread's 4 B columns
    const int m0 = blockIdx.z * 16;
    const int rows = min(16, p.m_total - m0);  // valid rows of this row block
    const LbSplit sp = lb_split(p, blockIdx.y, 16 * LB_MS_KW);
    // K slice of this warp: wl words (a multiple of 16) from wbeg, valid below wend.
    const int wl = (sp.kw1 - sp.kw0 + 16 * LB_MS_KW - 1) / (16 * LB_MS_KW) * 16;
    const int wbeg = sp.kw0 + wk * wl;
    const int wend = min(wbeg + wl, sp.kw1);
    const bool bvec = p.b_vec != 0;
    // ternary2 rows hold 16 k words each, in 4 t-rows.
    lb_pdl_prefetch(p.pdl, p.pf_mode, sp.b, p.ldb, T2 ? sp.kw0 / 16 * 4 : sp.kw0,
                    T2 ? min((sp.kw1 + 15) / 16 * 4, p.b_head_rows) : sp.kw1, tile0,
                    min(tile0 + LB_MS_COLS, p.bcols));

    // This thread's weight column at the first row of its K slice (a t2 row holds 16 k words
    // in 4 t-rows), and whether its 4 columns are one 16-byte load: worked out before the wait.
    const bool bfast = bvec && c0 + 4 <= p.bcols;
    const u32* bcol = sp.b + (long long)(wbeg / 16 * 4 + t) * p.ldb + c0;  // T2 only
    uint4 bq[LB_MS_PAIRS][NJ];
    auto load_b = [&](int kb) {
#pragma unroll
        for (int pr = 0; pr < LB_MS_PAIRS; ++pr) {
            const int kwb = wbeg + kb + 16 * pr;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                if (T2) {
                    // Past the slice: fields 1 (weight 0), since A there may belong to
                    // another k-warp.
                    bq[pr][j] = kwb < wend ? lb_b_word4_at(bcol + (long long)(kb / 4 + 4 * pr) * p.ldb,
                                                           c0, p.bcols, bfast)
                                           : make_uint4(0x55555555u, 0x55555555u, 0x55555555u,
                                                        0x55555555u);
                } else {
                    // (Addressed from sp.b here: 16 pointers worked out before the wait
                    // took 154 registers, too many for the next kernel's CTA to fit.)
                    const int r = kwb + t + 4 * j;
                    bq[pr][j] = r < wend ? lb_b_word4(sp.b, p.ldb, r, c0, p.bcols, bvec)
                                         : make_uint4(0u, 0u, 0u, 0u);
                }
            }
        }
    };

    // A staging: the valid rows (< M) x wl*KW words from kw0, zero past the split's K. Rows
    // past M are left as they are: they only feed accumulator rows that are never written.
    // Where each of the thread's 16-byte quads comes from and goes is worked out before
    // lb_pdl_wait (it reads nothing an earlier kernel writes), so under PDL that arithmetic
    // (divisions by the row length and by T) overlaps the previous kernel; after the wait
    // come only the loads, all issued before the first smem store.
    constexpr int AITERS = (16 * LB_MS_KSW * LB_MS_KW / 4 + LB_MS_THREADS - 1) / LB_MS_THREADS;
    const long long kv = MODE == LB_A_PACKED ? min((long long)sp.kw1, p.a_kvalid)
                                             : min((long long)sp.kw1 * 4, p.a_kvalid);
    const void* a_row[AITERS];
    int a_k[AITERS], a_dst[AITERS];  // k word (-1: zeros), smem word offset (-1: none)
    {
        // 16-byte quads per row; an empty split (wl = 0) stages zeros into column 0 instead.
        const int qpr = max(wl * LB_MS_KW / 4, 1);
        const int nq = rows * qpr;
#pragma unroll
        for (int i = 0; i < AITERS; ++i) {
            const int idx = tid + i * LB_MS_THREADS;
            const int r = idx / qpr, q = idx - r * qpr, k = sp.kw0 + q * 4;
            const bool in = idx < nq;
            a_dst[i] = in ? r * LB_MS_LDA + q * 4 : -1;
            a_k[i] = in && k < sp.kw1 ? k : -1;
            a_row[i] = lb_a_ptr(p, lb_a_row(p, m0 + (in ? r : 0), sp.a_head));
        }
    }
    // Frozen weights (LB_PF_EARLY): the first register batch is loaded before the wait.
    const bool early = (p.pf_mode & LB_PF_EARLY) != 0;
    if (early) load_b(0);
    lb_pdl_wait(p.pdl);
    lb_trace_at(1);
    if (!early) load_b(0);
#if defined(LB_MS_SCALE_BLOCKS)
    // The scale worked out here (lb_inline_scale) while the first weights fly.
    static_assert(MODE == LB_A_F32 && LB_MS_KW == 1, "inline scale: low-rank f32 input");
    static_assert(LB_MS_SCALE_BLOCKS >= 1 && LB_MS_SCALE_BLOCKS <= 32, "scale blocks");
    __shared__ double scale_red[LB_MS_THREADS];
    const float a_scale = lb_inline_scale(p, LB_MS_SCALE_BLOCKS, scale_red);
#define LB_MS_A_SCALE a_scale
#elif defined(LB_MS_GRID_SCALE)
    // The decoder's scale worked out by the whole (resident) grid, lb_grid_scale, while the
    // first weights fly; its block partials are absmean_scale's only at that kernel's size.
    static_assert(MODE == LB_A_F32 && LB_MS_THREADS == 256, "grid scale: decoder f32 input, 256 threads");
    static_assert(LB_MS_GRID_SCALE >= 1 && LB_MS_GRID_SCALE <= LB_RED_MAX_BLOCKS, "scale blocks");
    __shared__ double scale_red[LB_MS_THREADS];
    const float a_scale = lb_grid_scale(p, LB_MS_GRID_SCALE, scale_red);
#define LB_MS_A_SCALE a_scale
#else
#define LB_MS_A_SCALE lb_scale(p.scale_ptr, p.scale_param)
#endif
    {
        const float s = (MODE == LB_A_F32) ? LB_MS_A_SCALE : 0.0f;
        uint4 st[AITERS];
#pragma unroll
        for (int i = 0; i < AITERS; ++i)
            st[i] = a_k[i] >= 0 ? lb_a_word4<MODE>(a_row[i], a_k[i], kv, s, p.fmt, p.a_vec != 0)
                                : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int i = 0; i < AITERS; ++i)
            if (a_dst[i] >= 0) *(uint4*)(As + a_dst[i]) = st[i];
    }
    __syncthreads();
    lb_trace_at(2);

    // T2: the mma multiplies A by the unsigned fields (weight + 1) as they lie, no expansion;
    // rs[e], an mma with all-ones B, sums A over the same k (its row g or g + 8, like acc[q][e])
    // and is taken off at the end: the same i32 sums (mod 2^32) in a third of the instructions.
    int acc[4][4], rs[4] = {0, 0, 0, 0};
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[q][e] = 0;
    // ldmatrix x4 lanes: rows lane%16, words +4 for lanes 16-31 (a0..a3 as in lb_mma_chunk).
    const u32* a_lane = As + (lane & 15) * LB_MS_LDA + (lane >> 4) * 4 + wk * wl;
    // The mma of the register batch of 16 * PAIRS k words at kb.
    auto batch = [&](int kb) {
#pragma unroll
        for (int pr = 0; pr < LB_MS_PAIRS; ++pr) {
            if (wbeg + kb + 16 * pr >= wend) break;  // uniform over the warp
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                u32 af[4];
                lb_ldsm4(af, a_lane + kb + 16 * pr + 8 * s);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const u32 x = q == 0 ? bq[pr][0].x
                                         : (q == 1 ? bq[pr][0].y : (q == 2 ? bq[pr][0].z : bq[pr][0].w));
                    if (T2) {
                        lb_mma<UNS, true>(acc[q], af, lb_t2_field(x, 2 * s), lb_t2_field(x, 2 * s + 1));
                    } else {
                        const uint4 lo = bq[pr][(2 * s) % NJ], hi = bq[pr][(2 * s + 1) % NJ];
                        const u32 b0 = q == 0 ? lo.x : (q == 1 ? lo.y : (q == 2 ? lo.z : lo.w));
                        const u32 b1 = q == 0 ? hi.x : (q == 1 ? hi.y : (q == 2 ? hi.z : hi.w));
                        lb_mma<UNS>(acc[q], af, b0, b1);
                    }
                }
                if (T2) lb_mma<UNS, true>(rs, af, 0x01010101u, 0x01010101u);
            }
        }
    };
    // A k-warp's slice (wl <= KSW words) is KSW / (16 * PAIRS) batches at most. One batch
    // (ternary2, and i8x4 low-rank at D <= 256) is straight-line code with no reload; the
    // split decoder's two i8x4 batches keep a runtime loop (unrolled, it measured 0.6 us
    // slower at M = 8 and 16 on the H200; one straight batch made ternary2 0.4-0.5 us faster).
    static_assert(LB_MS_KSW % (16 * LB_MS_PAIRS) == 0, "whole register batches per k-warp");
    if (LB_MS_KSW == 16 * LB_MS_PAIRS) {
        batch(0);
    } else {
        for (int kb = 0; kb < wl; kb += 16 * LB_MS_PAIRS) {
            if (kb > 0) load_b(kb);
            batch(kb);
        }
    }
    if (T2) {
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[q][e] = (int)((u32)acc[q][e] - (u32)rs[e]);
    }

    if (LB_MS_KW == 1) lb_trace_at(4);
    const float as = LB_MS_A_SCALE;
#undef LB_MS_A_SCALE
    if (LB_MS_KW == 1) {
        // One k-warp (the low-rank projection): each thread stores its fragments.
        const int o_head = p.is_decoder ? 0 : sp.head;
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            const int m = m0 + g + 8 * rh;
            if (m >= p.m_total) continue;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = tile0 + wc * 32 + 16 * e + 4 * t;
                const int v[4] = {acc[0][2 * rh + e], acc[1][2 * rh + e], acc[2][2 * rh + e],
                                  acc[3][2 * rh + e]};
                const long long o = lb_out_row(p, m, o_head) + c;
                float f[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) f[j] = lb_dequant(v[j], p.w_scale, as, p.relu);
                if (p.c_vec && c + 4 <= p.ncols) {
                    if (p.out_dtype == 0) {
                        *(float4*)((float*)p.out + o) = make_float4(f[0], f[1], f[2], f[3]);
                    } else {
                        *(uint2*)((unsigned short*)p.out + o) =
                            make_uint2(lb_pack2(f[0], f[1], p.out_dtype),
                                       lb_pack2(f[2], f[3], p.out_dtype));
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (c + j < p.ncols) lb_store(p.out, o + j, f[j], p.out_dtype);
                }
            }
        }
        return;
    }

    // Several k-warps (the decoder): every warp leaves its valid rows in smem (overlaying A,
    // [KW][16][COLS]), a 16-byte store per row half: thread (g, t) holds, for register
    // 2*rh + e, row g + 8*rh and columns 16*e + 4*t + q (q = 0..3) of its warp. Then element i
    // of the valid rows x COLS tile is summed over the k-warps by thread i (integer: any order
    // gives the same bits).
    static_assert(LB_MS_KW == 1 || LB_MS_KW * LB_MS_COLS <= LB_MS_LDA, "k-warp partials overlay A");
    lb_trace_at(4);
    __syncthreads();  // every warp is done with A
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r >> 1);
        if (row < rows)
            *(int4*)&red[(wk * 16 + row) * LB_MS_COLS + wc * 32 + 16 * (r & 1) + 4 * t] =
                make_int4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
    }
    __syncthreads();
    // Element i of this thread: row m0 + r, column c of the valid rows x COLS tile. (Element,
    // not quad, per thread: each split-K add instruction of a warp then covers 32 consecutive
    // accumulator words; 4-column quads per thread made it touch 4x the sectors and measured
    // 1.5-2x slower on the H200.)
    constexpr int EPT = (16 * LB_MS_COLS + LB_MS_THREADS - 1) / LB_MS_THREADS;
    auto elem = [&](int i, int& r, int& c) {
        const int idx = tid + i * LB_MS_THREADS;
        r = idx / LB_MS_COLS;
        c = tile0 + idx % LB_MS_COLS;
        return r < rows && c < p.ncols;
    };
    int v[EPT];
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
        int r, c;
        u32 sum = 0u;
        if (elem(i, r, c)) {
#pragma unroll
            for (int w = 0; w < LB_MS_KW; ++w) sum += (u32)red[(w * 16 + r) * LB_MS_COLS + c - tile0];
        }
        v[i] = (int)sum;
    }
    lb_trace_at(5);
    lb_small_finish(p, v, [&](int i, long long& e, long long& o) {
        int r, c;
        if (!elem(i, r, c)) return false;
        e = (long long)(m0 + r) * p.ncols + c;
        o = (long long)(m0 + r) * p.ldc + c;
        return true;
    }, as);
}

#endif  // LB_MMA_SMALL
