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
// M <= 16 (any M for ternary2 weights where decoder_wgmma does not run): lb_mma_small,
// split = (head, K slice).
// LB_MS_MIN_BLOCKS: CTAs per SM the registers are capped for (more than the grid puts on an
// SM: the next kernel's CTAs fit beside this one's, so under PDL their weight prefetch
// overlaps this kernel).
// (Unset, the bound names no block count: a count of 1 changes ptxas' register allocation.)
#ifdef LB_MS_MIN_BLOCKS
#define LB_MS_BOUNDS __launch_bounds__(LB_MS_THREADS, LB_MS_MIN_BLOCKS)
#else
#define LB_MS_BOUNDS __launch_bounds__(LB_MS_THREADS)
#endif
extern "C" __global__ void LB_MS_BOUNDS decoder_mma_small(LbProblem p) {
    lb_trace_at(0);
    lb_mma_small<LB_MODE, LB_UNS != 0, LB_MS_T2 != 0>(p);
    lb_trace_at(3);
}

#elif defined(LB_MMA_PREP)
#ifndef LB_MODE
#define LB_MODE LB_A_CODES
#endif
// dst[r][4q..4q+3] = words 4q..4q+3 of A row r (quantized for f32, packed for codes, copied
// for misaligned words); ldo = round_up(kw, 4) words per row.
extern "C" __global__ void __launch_bounds__(256) mma_prep_a(LbMma p, u32* dst, long long rows,
                                                             int ldo) {
    lb_pdl_chain(p.pdl);
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

#if LB_MODE == LB_A_F32
// The 16 floats of item i (words 4q..4q+3 of row i / qpr), zero past the row's kvalid.
__device__ __forceinline__ void lb_prep_floats(const LbMma& p, long long i, int qpr, float (&f)[16]) {
    const long long r = i / qpr;
    const long k0 = (long)(i - r * qpr) * 16;
    const float* row = (const float*)p.a + r * p.lda;
    if (p.a_vec && k0 + 16 <= p.a_kvalid) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float4 v = __ldg((const float4*)(row + k0) + j);
            f[4 * j] = v.x;
            f[4 * j + 1] = v.y;
            f[4 * j + 2] = v.z;
            f[4 * j + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int e = 0; e < 16; ++e) f[e] = k0 + e < p.a_kvalid ? __ldg(row + k0 + e) : 0.0f;
    }
}

__device__ __forceinline__ void lb_prep_put(u32* dst, int ldo, long long i, int qpr,
                                            const float (&f)[16], float s, int fmt) {
    const long long r = i / qpr;
    u32 w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
        w[j] = lb_pack4(lb_code(f[4 * j], s, fmt), lb_code(f[4 * j + 1], s, fmt),
                        lb_code(f[4 * j + 2], s, fmt), lb_code(f[4 * j + 3], s, fmt));
    *(uint4*)(dst + r * ldo + (i - r * qpr) * 4) = make_uint4(w[0], w[1], w[2], w[3]);
}

// The sum of `v` over the warp by an xor butterfly: every lane ends with the same bits (each
// step adds the same two values, in either order), the same on every run.
__device__ __forceinline__ double lb_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// absmean_scale -> mma_prep_a for f32 rows in one cooperative launch (every block resident),
// the scale computed here. Item i is words 4q..4q+3 (16 floats) of row i / qpr, zero past the
// row's kvalid (the rows are the whole input: n = rows * kvalid). Each block sums |x|
// (max(x, 0) for uint8pos) over its items in f64 (warp butterflies, then the 8 warp sums in
// order) into partials[block]; thread 0 publishes it and arrives at the grid barrier *bar
// (lb_grid_arrive, the generation read at entry). Each warp then sums the partials the same
// way, so that all derive the same scale bits (block 0 stores it), and quantizes its items,
// the first still in registers. The projection after it may start at once (it waits for this
// grid).
extern "C" __global__ void __launch_bounds__(256, 2)
    mma_prep_scale_a(LbMma p, u32* dst, long long rows, int ldo, long long n, double* partials,
                     unsigned long long* bar, float* scale_out) {
    __shared__ double warp_sums[8];
    lb_trace_at(0);
    lb_pdl_launch_next();
    const unsigned gen = threadIdx.x == 0 ? lb_grid_gen(bar) : 0u;
    const bool pos = p.fmt == LB_FMT_U8POS;
    const int qpr = ldo / 4, lane = threadIdx.x & 31;
    const long long total = rows * qpr;
    const long long first = blockIdx.x * 256LL + threadIdx.x, stride = gridDim.x * 256LL;
    float f[16];
    double sum = 0.0;
    if (first < total) {
        lb_prep_floats(p, first, qpr, f);
#pragma unroll
        for (int e = 0; e < 16; ++e) sum += lb_abs_term(f[e], pos);
    }
    for (long long i = first + stride; i < total; i += stride) {
        float g[16];
        lb_prep_floats(p, i, qpr, g);
#pragma unroll
        for (int e = 0; e < 16; ++e) sum += lb_abs_term(g[e], pos);
    }
    sum = lb_warp_sum(sum);
    if (lane == 0) warp_sums[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double block = 0.0;
#pragma unroll
        for (int w = 0; w < 8; ++w) block += warp_sums[w];
        partials[blockIdx.x] = block;
        lb_grid_arrive(bar, gen, gridDim.x, blockIdx.x == 0);
    }
    lb_trace_at(1);
    __syncthreads();
    double all = 0.0;
    for (unsigned b = lane; b < gridDim.x; b += 32) all += __ldcg(partials + b);
    const float s = lb_absmean_scale(lb_warp_sum(all), n, p.fmt);
    if (threadIdx.x == 0 && blockIdx.x == 0) *scale_out = s;
    if (first < total) lb_prep_put(dst, ldo, first, qpr, f, s, p.fmt);
    for (long long i = first + stride; i < total; i += stride) {
        float g[16];
        lb_prep_floats(p, i, qpr, g);
        lb_prep_put(dst, ldo, i, qpr, g, s, p.fmt);
    }
    lb_trace_at(3);
}
#endif

#elif defined(LB_MMA_REDUCE)
// out[m][n] = dequant(sum over z of partial[z][m][n]); out rows are ldc = ncols. Integer
// sums: the same bits in any order. With LB_RED16 the partials are narrow (lb_p16 in mma.cuh)
// and a thread's loads of LB_RED_BATCH splits all leave before the first is used (a loop
// over them, or one predicate per load, had ptxas issue each load right before its use).
#ifndef LB_RED16
#define LB_RED16 0
#endif
#ifndef LB_RED_BATCH
#define LB_RED_BATCH 8
#endif
// LB_RED_W: output elements per thread and step, 4 or (narrow partials only) 8. With 8 a
// thread's loads are 16 bytes and half as many threads cover the output: at 76 registers
// (4-wide, batches of 8) an H200 holds 396 blocks of 256 threads, so M = 2048 x D = 256 (512
// such blocks) took two waves; 8-wide it is 256 blocks (the host's choice, reduce_width).
#ifndef LB_RED_W
#define LB_RED_W 4
#endif
#if LB_RED_W != 4 && !(LB_RED_W == 8 && LB_RED16)
#error "decoder_mma_reduce: LB_RED_W is 4, or 8 with LB_RED16"
#endif
// The reduction's two loops over the output: LB_RED_W columns at a time where vector partial
// loads and output stores are legal (the host checks D % LB_RED_W for 8), else one. vec(i, v)
// adds the splits' partials of elements i..i+LB_RED_W-1 into v; one(i) returns their sum at
// element i.
template <typename Vec, typename One>
__device__ __forceinline__ void lb_reduce_each(const LbMma& p, long long total, float as, Vec vec,
                                               One one) {
    constexpr int W = LB_RED_W;
    const long long stride = (long long)gridDim.x * blockDim.x;
    if (p.p_vec && p.c_vec) {
        for (long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * W; i < total;
             i += stride * W) {
            int v[W];
#pragma unroll
            for (int c = 0; c < W; ++c) v[c] = 0;
            vec(i, v);
            const long long m = i / p.ncols, n = i - m * p.ncols;
#pragma unroll
            for (int h = 0; h < W / 4; ++h) {
                const int q[4] = {v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]};
                lb_mma_put4(p, nullptr, m * p.ldc + n + 4 * h, (int)n + 4 * h, q, as, true);
            }
        }
    } else {
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
             i += stride) {
            const int sum = one(i);
            const long long m = i / p.ncols, n = i - m * p.ncols;
            lb_store(p.out, m * p.ldc + n, lb_dequant(sum, p.w_scale, as, p.relu), p.out_dtype);
        }
    }
}

// LB_RED_W / 2 words of narrow partials: one load of a split.
template <int N>
struct LbRedWords {
    using T = uint2;
};
template <>
struct LbRedWords<4> {
    using T = uint4;
};
__device__ __forceinline__ u32 lb_red_word(const uint2& q, int k) { return k == 0 ? q.x : q.y; }
__device__ __forceinline__ u32 lb_red_word(const uint4& q, int k) {
    return k == 0 ? q.x : k == 1 ? q.y : k == 2 ? q.z : q.w;
}

extern "C" __global__ void __launch_bounds__(256) decoder_mma_reduce(LbMma p, int splits) {
    lb_trace_at(0);
    lb_pdl_chain(p.pdl);  // a programmatic launch after the decoder: wait for its partials
    lb_trace_at(1);
    const long long total = (long long)p.m_total * p.ncols;
    const float as = lb_scale(p.scale_ptr, p.scale_param);
#if LB_RED16
    constexpr int NB = LB_RED_BATCH;
    const unsigned short* p16 = (const unsigned short*)p.partial;
    const int* wide = lb_p16_wide(p.partial, splits * total);
    // LB_RED_W / 2 words of i16 pairs per split (uint2 or uint4); h(q, c) is element c.
    using Q = typename LbRedWords<LB_RED_W / 2>::T;
    auto h = [](const Q& q, int c) { return lb_red_word(q, c / 2) >> (16 * (c % 2)); };
    auto vec = [&](long long i, int (&v)[LB_RED_W]) {
        int z0 = 0;
        for (; z0 + NB <= splits; z0 += NB) {  // whole batches: no predicates between loads
            Q q[NB];
#pragma unroll
            for (int j = 0; j < NB; ++j) q[j] = __ldcs((const Q*)(p16 + (z0 + j) * total + i));
            bool marked = false;
#pragma unroll
            for (int j = 0; j < NB; ++j)
#pragma unroll
                for (int c = 0; c < LB_RED_W; ++c) {
                    v[c] += (short)(h(q[j], c) & 0xffffu);
                    marked |= lb_p16_marked(h(q[j], c));
                }
            if (marked) {  // sums past an i16: the marker's -32768 out, the i32 in
#pragma unroll
                for (int j = 0; j < NB; ++j)
#pragma unroll
                    for (int c = 0; c < LB_RED_W; ++c)
                        if (lb_p16_marked(h(q[j], c)))
                            v[c] += __ldcs(wide + (z0 + j) * total + i + c) - LB_P16_WIDE;
            }
        }
        for (int z = z0; z < splits; ++z) {
            const long long e = z * total + i;
            const Q q = __ldcs((const Q*)(p16 + e));
#pragma unroll
            for (int c = 0; c < LB_RED_W; ++c) v[c] += lb_p16_get(h(q, c), wide, e + c);
        }
    };
    auto one = [&](long long i) {
        int sum = 0;
        for (int z = 0; z < splits; ++z)
            sum += lb_p16_get(__ldcs(p16 + z * total + i), wide, z * total + i);
        return sum;
    };
#else
    auto vec = [&](long long i, int (&v)[4]) {
        for (int z = 0; z < splits; ++z) {
            const int4 q = __ldcs((const int4*)(p.partial + z * total + i));
            v[0] += q.x;
            v[1] += q.y;
            v[2] += q.z;
            v[3] += q.w;
        }
    };
    auto one = [&](long long i) {
        int sum = 0;
        for (int z = 0; z < splits; ++z) sum += __ldcs(p.partial + z * total + i);
        return sum;
    };
#endif
    lb_reduce_each(p, total, as, vec, one);
    lb_trace_at(3);
}

#elif defined(LB_WGMMA)
// sm_90a only (compiled for `sm_90a`): the decoder tail on warpgroup mma with the product
// transposed, out^T[d][m] = sum_k W^T[d][k] y^T[k][m], so that the weights are wgmma's A
// operand from registers: a packed weight word (4 k of one column d) is exactly one A fragment
// register, so the weights need no re-layout. CTA (x, y, z) covers output columns n0 = 256x..,
// rows m0 = BM y.. (BM = LB_DW_BM, 128 or 64) and the z-th contiguous run of the (head,
// 32-word chunk) list, as decoder_tail_mma does; its four warpgroups take 64 columns each, all
// BM rows. Per chunk, the ring holds the y tile (BM rows x 128 bytes, one 128-byte swizzled
// plane) and the weight tile (32 k words x 256 columns as they lie), both loaded by 16-byte
// cp.asyncs; a ring slot (LB_DW_STAGES of them) holds LB_DW_PL chunks under one barrier and is
// loaded STAGES - 2 slots ahead. Each thread reads its fragment words from the weight tile
// into a register double buffer right before its four wgmma k32 steps, while the previous
// chunk's wgmma still runs. One split writes the output, several i32 partials [z][M][D] for
// decoder_mma_reduce (narrow ones with LB_DW_P16: lb_p16 in mma.cuh).
// With LB_DW_T2 the weights are ternary2 (mma.cuh): a chunk's weight tile is its 8 t2 rows,
// a quarter of the bytes, and each thread expands its 4 fragment words into the 16 registers.
// With LB_DW_ZC = Z > 1 the grid has Z splits, one cluster per tile, which sum their
// accumulators through distributed shared memory instead of partials: each CTA stores its
// tile into its own ring, and after a cluster barrier CTA z adds rows z * 128 / Z.. of the Z
// tiles in rank order and writes them to the output.
//
// Glossary (see also mma.cuh, common.cuh)
//   wgmma RS  wgmma.mma_async.sync.aligned.m64n{BM}k32.s32.s8.{s8|u8}, A (weights) from
//             registers, B (y rows) from smem: D[64 columns x BM rows], BM / 2 i32 per thread
//             (A .u8 under LB_DW_T2U: ternary2 fields w + 1, the y row sums subtracted after)
//   colmap    wgmma row r of warp w (16 rows) is output column 16w + 2 (r % 8) + r / 8 of the
//             warpgroup's 64: a thread's rows g and g + 8 are adjacent columns dc, dc + 1, so
//             its A registers come in 8-byte loads and its outputs go out in 8-byte stores
//   D frag    register i: column dc + (i/2) % 2, row 8 (i/4) + 2t + i%2 of the tile
//   Ws        weight tile [LB_DW_WROWS][LB_DW_LDW] words (32 k words, or 8 t2 rows): rows
//             padded by 8 words, so a warp's 8-byte fragment loads (4 rows x 64 bytes) take
//             the minimum two wavefronts
//   full/empty  LB_DW_MBAR's mbarriers per ring slot: `full` completes when the slot's load
//             is published by every warp (and its TMA bytes landed), `empty` when every warp
//             released it; a load's phase is load / S, its parity (load / S) & 1

#if LB_DW_BN != 256 || (LB_DW_BM != 128 && LB_DW_BM != 64) || LB_DW_THREADS != 512 || LB_DW_STAGES < 3
#error "decoder_wgmma: LB_DW_BN, LB_DW_BM, LB_DW_THREADS must be 256, 128 or 64, 512; STAGES >= 3"
#endif
#if LB_DW_ZC != 1 && LB_DW_ZC != 2 && LB_DW_ZC != 4 && LB_DW_ZC != 8
#error "decoder_wgmma: LB_DW_ZC must be 1, 2, 4 or 8"
#endif
#if LB_DW_ZC != 1 && LB_DW_BM != 128
#error "decoder_wgmma: split clusters need LB_DW_BM = 128"
#endif
#ifndef LB_DW_PL
#define LB_DW_PL 1
#endif
#if LB_DW_PL != 1 && LB_DW_PL != 2
#error "decoder_wgmma: LB_DW_PL (chunks per ring slot) must be 1 or 2"
#endif
#define LB_DW_RSLOT (LB_DW_SLOT * LB_DW_PL)  // ring slot: LB_DW_PL chunks, one barrier
#define LB_DW_NACC (LB_DW_BM / 2)  // accumulators per thread: BM rows x 2 columns
#define LB_DW_RH (LB_DW_BM / 64)   // 64-row halves of the y tile a thread loads
#ifndef LB_DW_T2
#define LB_DW_T2 0
#endif
#ifndef LB_DW_P16
#define LB_DW_P16 0  // split partials narrow (lb_p16), for decoder_mma_reduce with LB_RED16
#endif
// LB_DW_T2U (ternary2 only): the A fragments are a t2 slot's u8 fields f = w + 1 (two
// instructions per register instead of four), wgmma .u8 A; each thread also sums the y bytes
// it loaded (dp4a by ones), and after the mainloop sum_k f y - sum_k y = sum_k w y, exactly.
#ifndef LB_DW_T2U
#define LB_DW_T2U 0
#endif
#if LB_DW_T2U && !LB_DW_T2
#error "decoder_wgmma: LB_DW_T2U needs LB_DW_T2"
#endif
// LB_DW_MBAR: ring slots are handed over by mbarriers instead of a block barrier per slot:
// warps publish a slot load (full[s]) two slots before it is needed and release a slot
// (empty[s]) one slot after its wgmmas are done, so warps may drift a slot apart and none
// waits for the slowest at every slot. Loads are issued S - 2 slots ahead, published S - 4
// slots after their issue. The schedule is model-checked in src/backend/cuda/ring_model.rs.
#ifndef LB_DW_MBAR
#define LB_DW_MBAR 0
#endif
#if LB_DW_MBAR && LB_DW_STAGES < 6
#error "decoder_wgmma: LB_DW_MBAR needs LB_DW_STAGES >= 6"
#endif
// LB_DW_TMA (with LB_DW_MBAR, one chunk per slot): thread 0 loads each y tile by TMA (the
// kernel's second parameter maps y as [B][H][T][L bytes], boxes of 128 bytes x BM rows,
// 128-byte swizzle: the ring's layout; zeros past L and T), completing on the slot's `full`
// barrier, which then also counts thread 0's arrival; the weights stay every thread's
// cp.asyncs (bulk copies of their 1 KB rows measured slow on the H200: 128-byte bulk copies
// stream at 0.54 TB/s, benches/gpu/dram_rate.cu). The host takes this path only where a row
// tile lies in one batch (B = 1 or T % BM = 0).
#ifndef LB_DW_TMA
#define LB_DW_TMA 0
#endif
#if LB_DW_TMA && (!LB_DW_MBAR || LB_DW_PL != 1)
#error "decoder_wgmma: LB_DW_TMA needs LB_DW_MBAR and one chunk per slot"
#endif
#define LB_DW_ACC_LD (LB_DW_BN + 8)  // accumulator tile rows in smem (Z mode), in ints
#define LB_DW_LDW (LB_DW_BN + 8)
#define LB_DW_YBYTES (LB_DW_BM * 128)
#define LB_DW_WROWS (LB_DW_T2 ? 8 : 32)
// Ring slot (LB_DW_SLOT bytes, from the Rust side): y tile, then weight tile; a multiple of
// 1024 bytes (y tiles stay atom-aligned).
static_assert(LB_DW_SLOT % 1024 == 0 && LB_DW_SLOT >= LB_DW_YBYTES + LB_DW_WROWS * LB_DW_LDW * 4,
              "decoder_wgmma: ring slots hold a chunk and are 1024-byte aligned");
static_assert(LB_DW_ZC == 1 || LB_DW_STAGES * LB_DW_RSLOT >= LB_DW_BM * LB_DW_ACC_LD * 4,
              "decoder_wgmma: the ring holds the accumulator tile in cluster mode");

template <bool UNS>
__device__ __forceinline__ void lb_dw_mma(int (&d)[LB_DW_NACC], const u32 (&r)[16], u64 db) {
    lb_wg_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s)
        lb_wgmma_rs<UNS, LB_DW_BM, LB_DW_T2U != 0>(d, r[4 * s], r[4 * s + 1], r[4 * s + 2],
                                                    r[4 * s + 3], db + 2 * s, 1);
    lb_wg_commit();
}

// put(r, d[4j + e], d[4j + 2 + e]) for each (j, e) whose row m0 + r, r = 8j + e, is below M.
template <typename Put>
__device__ __forceinline__ void lb_dw_each(const int (&d)[LB_DW_NACC], int m0, int m_total, Put put) {
#pragma unroll
    for (int j = 0; j < LB_DW_BM / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
            if (m0 + 8 * j + e < m_total) put(8 * j + e, d[4 * j + e], d[4 * j + 2 + e]);
}

template <bool UNS>
__device__ __forceinline__ void lb_decoder_wgmma(const LbMma& p, const LbTmap* tmap) {
    extern __shared__ __align__(128) u32 lb_dyn_smem[];
    constexpr int S = LB_DW_STAGES;
    const unsigned base = lb_smem(lb_dyn_smem);
    unsigned char* ring = (unsigned char*)lb_dyn_smem + (((base + 1023) & ~1023u) - base);

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * LB_DW_BN, m0 = blockIdx.y * LB_DW_BM;
    const int cph = (p.kw + 31) / 32;
    const int total = p.heads * cph;
    const int c0 = (int)((long long)blockIdx.z * total / gridDim.z);
    const int units = (int)((long long)(blockIdx.z + 1) * total / gridDim.z) - c0;
    const u32* A = (const u32*)p.a;

    // y: this thread's 16-byte chunk ck of rows r0 (and r0 + 64 at BM = 128) of each tile.
    const int ck = tid & 7, r0 = tid >> 3;
    const int s_off = r0 * 128 + ((ck ^ (r0 & 7)) << 4);
    long long y_row[LB_DW_RH];
    const u32* y_src[LB_DW_RH];  // row start + ck * 4 (the chunk's offset is added per load)
#pragma unroll
    for (int rr = 0; rr < LB_DW_RH; ++rr) {
        const int m = m0 + r0 + 64 * rr;
        y_row[rr] = -1;
        if (m < p.m_total) {
            const int b = m / p.time, tt = m - b * p.time;
            y_row[rr] = ((long long)b * p.a_heads * p.time + tt) * p.lda;
        }
        y_src[rr] = y_row[rr] >= 0 ? A + y_row[rr] + ck * 4 : A;
    }
    // Weights (LB_DW_WROWS rows per chunk): 16-byte pieces (columns 4c..4c+3 of rows
    // tid / 64 + 8i) or, without b_vec, single words (column tid % 256 of rows tid / 256 + 2i).
    constexpr int WR = LB_DW_WROWS;
    const bool wfull = p.b_vec && n0 + LB_DW_BN <= p.bcols;
    const int wr = tid >> 6, wc = (tid & 63) * 4;
    const u32* w_src = p.b + (long long)wr * p.ldb + n0 + wc;
    const int w_dst = wr * LB_DW_LDW + wc;
    const long long ldb8 = 8 * p.ldb;
    // The next chunk to load: (head, chunk) and its offsets in y and in the weights, stepped
    // incrementally (interior chunks then cost a few adds).
    int lh = c0 / cph, lkc = c0 - lh * cph;
    long long y_off = (long long)lh * p.time * p.lda + lkc * 32;
    long long w_off = ((long long)lh * p.b_head_rows + lkc * WR) * p.ldb;
    const long long y_head = (long long)p.time * p.lda - (long long)cph * 32;
    const long long w_head = ((long long)p.b_head_rows - (long long)cph * WR) * p.ldb;
    // Is weight row r of the chunk at k word k0 needed (k words of it below kw)? Rows past
    // it may lie in the next head or past the end; y is zero there, so they load as zeros.
    auto w_needed = [&](int r, int kleft) { return LB_DW_T2 ? (r >> 2) * 16 < kleft : r < kleft; };
    // Chunk u's offset in the ring: chunk u % LB_DW_PL of slot u / LB_DW_PL % S.
    auto chunk_off = [&](int u) {
        return ((u / LB_DW_PL) % S) * LB_DW_RSLOT + (u % LB_DW_PL) * LB_DW_SLOT;
    };
    // The weight tile of a chunk at k word k0 that is not interior: rows past kw or columns
    // past the tile zero-filled, 16-byte pieces where legal, else words.
    auto load_w_edge = [&](u32* ws, int k0) {
        const u32* wsrc = p.b + w_off + n0;
        const int kleft = p.kw - k0;
        if (p.b_vec) {
            const int vb = n0 + wc < p.bcols ? min(4, p.bcols - n0 - wc) * 4 : 0;
#pragma unroll
            for (int i = 0; i < WR / 8; ++i) {
                const bool ok = w_needed(wr + 8 * i, kleft) && vb > 0;
                lb_cp16(ws + w_dst + 8 * i * LB_DW_LDW,
                        ok ? wsrc + (wr + 8 * i) * p.ldb + wc : p.b, ok ? vb : 0);
            }
        } else {
            const int c = tid & 255, r = tid >> 8;
#pragma unroll 4
            for (int i = 0; i < WR / 2; ++i) {
                const bool ok = w_needed(r + 2 * i, kleft) && n0 + c < p.bcols;
                lb_cp4(ws + (r + 2 * i) * LB_DW_LDW + c, ok ? wsrc + (r + 2 * i) * p.ldb + c : p.b,
                       ok ? 4 : 0);
            }
        }
    };
#if LB_DW_MBAR
    // Slot s: full[s] completes a phase when all 16 warps published its load (and, with
    // LB_DW_TMA, thread 0's TMA and bulk copies landed), empty[s] when all 16 released it
    // (lane 0 of each warp arrives after __syncwarp).
    __shared__ __align__(8) u64 mb_full[S], mb_empty[S];
    if (tid < S) {
        lb_mbar_init(&mb_full[tid], LB_DW_THREADS / 32 + LB_DW_TMA);
        lb_mbar_init(&mb_empty[tid], LB_DW_THREADS / 32);
    }
    __syncthreads();
#endif
#if LB_DW_TMA
    // This CTA's row tile in y's batch and time (one batch: the host's condition).
    const int y_b0 = m0 / p.time, y_t0 = m0 - y_b0 * p.time;
#endif
    auto load_chunk = [&](int u) {
        if (u < units) {
            unsigned char* slot = ring + chunk_off(u);
            u32* ws = (u32*)(slot + LB_DW_YBYTES);
            const int k0 = lkc * 32;
#if LB_DW_TMA
            if (tid == 0) {  // y's tile
                u64* bar = &mb_full[u % S];
                lb_mbar_expect(bar, LB_DW_YBYTES);
                lb_tma_4d(slot, tmap, k0 * 4, y_t0, lh, y_b0, bar);
            }
#endif
            // (the test written in this if, not held in a variable: so held, ptxas scheduled
            // every default variant differently)
            if (wfull && k0 + 32 <= p.kw) {  // interior chunk: only rows past M are masked
#if !LB_DW_TMA
#pragma unroll
                for (int rr = 0; rr < LB_DW_RH; ++rr)
                    lb_cp16((u32*)(slot + s_off + rr * 64 * 128), y_src[rr] + y_off,
                            y_row[rr] >= 0 ? 16 : 0);
#endif
                const u32* w = w_src + w_off;
#pragma unroll
                for (int i = 0; i < WR / 8; ++i)
                    lb_cp16(ws + w_dst + 8 * i * LB_DW_LDW, w + i * ldb8, 16);
            } else {
#if !LB_DW_TMA
                const int q = k0 + ck * 4;
                const int valid = q < p.kw ? min(4, p.kw - q) * 4 : 0;
#pragma unroll
                for (int rr = 0; rr < LB_DW_RH; ++rr) {
                    const bool ok = y_row[rr] >= 0 && valid > 0;
                    lb_cp16((u32*)(slot + s_off + rr * 64 * 128), ok ? y_src[rr] + y_off : A,
                            ok ? valid : 0);
                }
#endif
                load_w_edge(ws, k0);
            }
            y_off += 32;
            w_off += WR * p.ldb;
            if (++lkc == cph) {
                lkc = 0;
                ++lh;  // (read by the TMA only)
                y_off += y_head;
                w_off += w_head;
            }
        }
    };
    // Ring slot c % S takes chunks c LB_DW_PL.. (one commit group per slot, always, so
    // that group c is slot load c).
    auto load = [&](int c) {
#pragma unroll
        for (int q = 0; q < LB_DW_PL; ++q) load_chunk(c * LB_DW_PL + q);
        lb_commit();
    };

#if LB_DW_MBAR
    auto warp_arrive = [&](u64* bar) {
        __syncwarp();
        if (lane == 0) lb_mbar_arrive(bar);
    };
    // Slot load c, whose copies by this thread have landed (the caller waited for its
    // group): made visible to wgmma, then published. (The __syncwarp orders every lane's
    // copies before lane 0's release. compute-sanitizer's racecheck does not follow that
    // edge and reports "potential RAW hazards" here. An arrival by every thread silences
    // it, but it measured 2-3 % slower at M = 2048 / 8192 on the H100: BENCHMARKS.md.)
    auto publish = [&](int c) {
        lb_fence_async_smem();
        warp_arrive(&mb_full[c % S]);
    };
#endif
#pragma unroll
    for (int c = 0; c < S - 2; ++c) load(c);

    int d[LB_DW_NACC];
#pragma unroll
    for (int i = 0; i < LB_DW_NACC; ++i) d[i] = 0;
    const u64 db0 = lb_wg_desc(ring);
    // This thread's fragment words in a weight tile: word row 4i + t (i8x4; i = 0..7), or t2
    // row 4q + t whose slot j is word row 4 (4q + j) + t; columns dc, dc + 1.
    const int dcol = 64 * wg + 16 * warp + 2 * g;
    const int dc = n0 + dcol;
    const int frag = t * LB_DW_LDW + dcol;
#if !LB_DW_MBAR
    // Slot load c: its slot landed and is visible to wgmma; every warpgroup is past the
    // wgmma of slot c - 2's chunks (wait_group 1 below), so slot (c - 2) % S takes load
    // c + S - 2.
    auto sync = [&](int c) {
        lb_wait<S - 3>();
        lb_fence_async_smem();
        __syncthreads();
        load(c + S - 2);
    };
#endif
    // LB_DW_T2U: this thread's sums of the y bytes it loads, rows r0 + 64 rr.
    int ysum[LB_DW_RH];
#pragma unroll
    for (int rr = 0; rr < LB_DW_RH; ++rr) ysum[rr] = 0;
    // Chunk u into `cur` (last read by the wgmma two chunks back, complete).
    auto step = [&](int u, u32(&cur)[16]) {
        const int off = chunk_off(u);
        const u32* ws = (const u32*)(ring + off + LB_DW_YBYTES) + frag;
        if (LB_DW_T2) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint2 v = *(const uint2*)(ws + 4 * h * LB_DW_LDW);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    cur[2 * (4 * h + j)] = lb_t2_areg<LB_DW_T2U != 0>(v.x, j);
                    cur[2 * (4 * h + j) + 1] = lb_t2_areg<LB_DW_T2U != 0>(v.y, j);
                }
            }
            if (LB_DW_T2U) {
#pragma unroll
                for (int rr = 0; rr < LB_DW_RH; ++rr)
                    ysum[rr] = lb_sum16<UNS>(*(const uint4*)(ring + off + s_off + rr * 64 * 128),
                                             ysum[rr]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const uint2 v = *(const uint2*)(ws + 4 * i * LB_DW_LDW);
                cur[2 * i] = v.x;
                cur[2 * i + 1] = v.y;
            }
        }
        lb_dw_mma<UNS>(d, cur, db0 + (u64)(off >> 4));
        lb_wg_wait<1>();  // the previous chunk's wgmma done
    };
    u32 w0[16], w1[16];
#if LB_DW_MBAR
    const int nl = (units + LB_DW_PL - 1) / LB_DW_PL;  // slot loads that hold chunks
    lb_wait<S - 3>();  // (groups committed: loads 0 .. S - 3)
    publish(0);
    // Chunk u; at the first chunk of slot load c, once load c is published by every warp:
    // after its first step (chunk u - 1's wgmma done, so slot load c - 1's), release load
    // c - 1; refill slot (c - 2) % S, released by every warp one slot ago, with load
    // c + S - 2; publish load c + 2 (and at c = 0 load 1).
    auto chunk = [&](int u, u32(&cur)[16]) {
        const int c = u / LB_DW_PL;
        const bool first = u % LB_DW_PL == 0;
        if (first) lb_mbar_wait(&mb_full[c % S], (c / S) & 1);
        if (u == 0) lb_trace_at(1);
        step(u, cur);
        if (!first) return;
        if (c >= 1) warp_arrive(&mb_empty[(c - 1) % S]);
        const int j = c + S - 2;
        if (j >= S && j < nl) lb_mbar_wait(&mb_empty[j % S], (j / S - 1) & 1);
        load(j);
        if (c == 0 && nl > 1) {
            lb_wait<S - 3>();  // (loads 0 .. S - 2 committed)
            publish(1);
        }
        if (c + 2 < nl) {
            lb_wait<S - 4>();
            publish(c + 2);
        }
    };
    for (int u = 0; u < units; u += 2) {  // (a path from w0's step to w0's would serialize)
        chunk(u, w0);
        if (u + 1 == units) break;
        chunk(u + 1, w1);
    }
#else
    for (int u = 0; u < units; u += 2) {  // (a path from w0's step to w0's would serialize)
        sync(u / LB_DW_PL);
        if (u == 0) lb_trace_at(1);
        step(u, w0);
        if (u + 1 == units) break;
        if (LB_DW_PL == 1) sync(u + 1);
        step(u + 1, w1);
    }
#endif
    lb_wg_wait<0>();
    lb_wait<0>();
    lb_trace_at(2);
#if LB_DW_T2U
    {
        // Row r's y sum is its 8 loaders' (lanes 8q..8q+7 of a warp); then every
        // accumulator of row r less it.
        __shared__ int ysum_row[LB_DW_BM];
#pragma unroll
        for (int rr = 0; rr < LB_DW_RH; ++rr) {
            int v = ysum[rr];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            if (ck == 0) ysum_row[r0 + 64 * rr] = v;
        }
        __syncthreads();
        lb_trace_at(5);
#pragma unroll
        for (int j = 0; j < LB_DW_BM / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int v = ysum_row[8 * j + 2 * t + e];
                d[4 * j + e] -= v;
                d[4 * j + 2 + e] -= v;
            }
    }
#endif
#if LB_DW_ZC > 1
    {
        // Every warp is past the ring: it takes this CTA's accumulator tile.
        __syncthreads();
        int* acc = (int*)ring;
#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                *(int2*)(acc + (8 * j + 2 * t + e) * LB_DW_ACC_LD + dcol) =
                    make_int2(d[4 * j + e], d[4 * j + 2 + e]);
        lb_cluster_sync();
        constexpr int RB = LB_DW_BM / LB_DW_ZC;  // rows this CTA sums
        const unsigned zr = lb_cluster_ctaid_z();
        const float as = lb_scale(p.scale_ptr, p.scale_param);
        const int c4 = (tid & 63) * 4, col = n0 + c4;
        const bool vec = p.c_vec && col + 3 < p.ncols;
        const unsigned base_addr = lb_smem(acc) + 4 * c4;
        for (int r = zr * RB + (tid >> 6); r < (int)(zr + 1) * RB; r += LB_DW_THREADS / 64) {
            const int m = m0 + r;
            int v[4] = {0, 0, 0, 0};
#pragma unroll
            for (int q = 0; q < LB_DW_ZC; ++q) {
                const int4 x = lb_ld_dsmem4(base_addr + 4 * r * LB_DW_ACC_LD, q);
                v[0] += x.x;
                v[1] += x.y;
                v[2] += x.z;
                v[3] += x.w;
            }
            if (m < p.m_total && col < p.ncols)
                lb_mma_put4(p, nullptr, (long long)m * p.ldc + col, col, v, as, vec);
        }
        lb_cluster_sync();  // no CTA leaves while a peer reads its tile
        return;
    }
#endif

    // d[4j + 2c + e]: column dc + c, row m0 + 8j + 2t + e. Each kind of store is one loop of
    // its own, chosen once: with the choice made per element, the 32 elements' code of every
    // kind lay interleaved over 3000 instructions, and at M = 512 the warps' one pass through
    // them, cold in the instruction cache, drew half of ncu's stall samples.
    const bool d0 = dc < p.ncols, d1 = dc + 1 < p.ncols;
    if (!d0) return;
    const int mt = m0 + 2 * t;  // this thread's first row
#if LB_DW_P16
    if (gridDim.z > 1) {  // narrow partials of split z (lb_p16)
        const long long e0 = ((long long)blockIdx.z * p.m_total + mt) * p.ncols + dc;
        unsigned short* part = (unsigned short*)p.partial + e0;
        int* wide = lb_p16_wide(p.partial, (long long)gridDim.z * p.m_total * p.ncols) + e0;
        if (p.p_vec && d1) {
            lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
                const long long o = (long long)r * p.ncols;
                __stcg((unsigned*)(part + o), lb_p16(v0) | lb_p16(v1) << 16);
                if (!lb_fits16(v0)) wide[o] = v0;
                if (!lb_fits16(v1)) wide[o + 1] = v1;
            });
        } else {
            lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
                const long long o = (long long)r * p.ncols;
                part[o] = (unsigned short)lb_p16(v0);
                if (!lb_fits16(v0)) wide[o] = v0;
                if (d1) {
                    part[o + 1] = (unsigned short)lb_p16(v1);
                    if (!lb_fits16(v1)) wide[o + 1] = v1;
                }
            });
        }
        return;
    }
#endif
    if (gridDim.z > 1) {  // i32 partials of split z
        int* part = p.partial + ((long long)blockIdx.z * p.m_total + mt) * p.ncols + dc;
        if (p.p_vec && d1) {
            lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
                __stcg((int2*)(part + (long long)r * p.ncols), make_int2(v0, v1));
            });
        } else {
            lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
                int* dst = part + (long long)r * p.ncols;
                dst[0] = v0;
                if (d1) dst[1] = v1;
            });
        }
        return;
    }
    const float as = lb_scale(p.scale_ptr, p.scale_param);
    auto deq = [&](int v) { return lb_dequant(v, p.w_scale, as, p.relu); };
    const long long o0 = (long long)mt * p.ldc + dc;
    if (p.c_vec && d1 && p.out_dtype == 0) {
        lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
            *(float2*)((float*)p.out + o0 + (long long)r * p.ldc) = make_float2(deq(v0), deq(v1));
        });
    } else if (p.c_vec && d1) {
        lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
            *(u32*)((unsigned short*)p.out + o0 + (long long)r * p.ldc) =
                lb_pack2(deq(v0), deq(v1), p.out_dtype);
        });
    } else {
        lb_dw_each(d, mt, p.m_total, [&](int r, int v0, int v1) {
            const long long o = o0 + (long long)r * p.ldc;
            lb_store(p.out, o, deq(v0), p.out_dtype);
            if (d1) lb_store(p.out, o + 1, deq(v1), p.out_dtype);
        });
    }
}

#if LB_DW_ZC > 1
#define LB_DW_CLUSTER_DIMS __cluster_dims__(1, 1, LB_DW_ZC)
#else
#define LB_DW_CLUSTER_DIMS
#endif
// LB_DW_TMA kernels take y's tensor map as a second parameter.
#if LB_DW_TMA
#define LB_DW_MAP_PARAM , const __grid_constant__ LbTmap y_map
#define LB_DW_MAP (&y_map)
#else
#define LB_DW_MAP_PARAM
#define LB_DW_MAP nullptr
#endif
extern "C" __global__ void LB_DW_CLUSTER_DIMS __launch_bounds__(LB_DW_THREADS, 1)
    decoder_wgmma(LbMma p LB_DW_MAP_PARAM) {
    lb_trace_at(0);
    lb_decoder_wgmma<LB_UNS != 0>(p, LB_DW_MAP);
    lb_trace_at(3);
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
