// decoder_tail.wgsl — decoder tail on i8x4 words, heads summed in the kernel:
//   out[b,0,t,e] = (Σ_h Σ_{l<L} yq[b,h,t,l]·wq[h·Lart+l, e] as f32 · w_scale) · a_scale
//
// Glossary
//   word      i8x4: byte j of a u32 holds element 4k+j along L; a partial last word is 0-padded
//   KW        ceil(L/4), words per input row; WHW = ceil(Lart/4), words per head block of the
//             weight (L <= Lart: only the first KW words of each head block are read; y's
//             padding lanes are zero, so the full-Lart packed weight is used as is)
//   split-K   K = H·KW words is long and the output (M × D) is small, so workgroup z takes
//             head h = z / S and the K chunk z % S of that head, and writes an i32 partial
//             plane z; decoder_reduce sums the planes in plane order (exact integer sums) and
//             applies the epilogue
//   tile, dot4, unsigned: as in lowrank.wgsl (the GEMM helpers are identical)
//   epilogue  (acc·w_scale)·a_scale, relu, then f32, or f16/bf16 rounded to nearest even
//             (two per u32 word, element 2i in the low half)
//
// Entries: decoder_packed, decoder_codes, decoder_f32 (i8x4 GEMM chunks → partial planes),
// decoder_float (float path, one f32 plane per head), decoder_reduce (planes → output; also
// finishes the f16/bf16 epilogues of the lowrank kernels, one plane).

override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override BK: u32 = 32u;              // K words per step, a multiple of 4
override DOT4_NATIVE: bool = true;
override A_UNSIGNED: bool = false;
override A_SCALE_DEVICE: bool = false;
override RELU: bool = false;
override RAW_OUT: bool = true;        // GEMM entries always write raw partials
override PARTIAL_FLOAT: bool = false; // decoder_reduce: planes hold f32 sums (float path)
override OUT_DTYPE: u32 = 0u;         // decoder_reduce: 0 f32, 1 f16, 2 bf16
override EPS: f32 = 1e-8;

override BM: u32 = WG_Y * 8u;
override BN: u32 = WG_X * 8u;
// Prefetched words per invocation and K step: A and B tile elements over invocations
// (at most PF; TileConfig::valid checks).
override A_PER: u32 = (BM * BK + WG_X * WG_Y - 1u) / (WG_X * WG_Y);
override B_PER: u32 = (BK * BN + WG_X * WG_Y - 1u) / (WG_X * WG_Y);

const TM: u32 = 8u;
const PF: u32 = 32u;               // register prefetch capacity (words of A and of B)
const ONES: u32 = 0x01010101u;
const FT: u32 = 64u;
const FK: u32 = 16u;
const WG_REDUCE: u32 = 256u;

struct Params {
    m: u32,            // B·T
    n_out: u32,        // D, the output width
    k_words: u32,      // KW
    k_elems: u32,      // L
    time: u32,         // T
    in_heads: u32,     // H (y has every head)
    heads: u32,        // H
    ldw: u32,          // D, words per weight row
    w_scale: f32,
    a_scale: f32,      // host scale (A_SCALE_DEVICE = false)
    qmax: f32,         // decoder_f32: code range
    tile_y0: u32,      // first M tile of this dispatch
    splits: u32,       // S, K chunks per head
    chunk: u32,        // words per chunk (a multiple of BK)
    w_head_words: u32, // WHW
    planes: u32,       // decoder_reduce: partial planes
    count: u32,        // decoder_reduce: output elements (= elements per plane)
    words: u32,        // decoder_reduce: output words
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// words (packed), i32 codes or f32 values, by entry; read as raw bits
@group(0) @binding(1) var<storage, read> a_in: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> scale_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;
@group(0) @binding(5) var<storage, read> part: array<u32>;

var<workgroup> a_tile: array<vec4<u32>, BM * BK / 4u>;
var<workgroup> b_tile: array<vec4<u32>, BK * BN / 4u>;
var<workgroup> row_in: array<u32, BM>;
var<workgroup> fa_tile: array<f32, FT * FK>;
var<workgroup> fb_tile: array<vec4<f32>, FK * FT / 4u>;

const NO_ROW: u32 = 0xffffffffu;

// --- exact rounding helpers (identical in every shader; build.rs checks) ---

// 32×32 → 64-bit product as (lo, hi).
fn mul_wide(x: u32, y: u32) -> vec2<u32> {
    let x0 = x & 0xffffu;
    let x1 = x >> 16u;
    let y0 = y & 0xffffu;
    let y1 = y >> 16u;
    let p00 = x0 * y0;
    let p01 = x0 * y1;
    let p10 = x1 * y0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (mid << 16u) | (p00 & 0xffffu);
    let hi = x1 * y1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// A finite f32 > 0 as (m, e) with v = m·2^e and 2^23 <= m < 2^24 (subnormals normalised).
fn split_f32(v: f32) -> vec2<i32> {
    let bits = bitcast<u32>(v) & 0x7fffffffu;
    let field = bits >> 23u;
    var m = bits & 0x7fffffu;
    var e = -149;
    if field != 0u {
        m = m | 0x800000u;
        e = i32(field) - 150;
    } else {
        let shift = countLeadingZeros(m) - 8u;
        m = m << shift;
        e = e - i32(shift);
    }
    return vec2<i32>(i32(m), e);
}

fn cmp64(a: vec2<u32>, b: vec2<u32>) -> i32 {
    if a.y != b.y {
        return select(-1, 1, a.y > b.y);
    }
    if a.x != b.x {
        return select(-1, 1, a.x > b.x);
    }
    return 0;
}

// Exact sign of a - (m·2^em)·b for finite a > 0, b > 0 and 0 < m < 2^26.
fn cmp_mul(a: f32, m: u32, em: i32, b: f32) -> i32 {
    let sa = split_f32(a);
    let sb = split_f32(b);
    let am = u32(sa.x);
    let prod = mul_wide(m, u32(sb.x)); // < 2^50
    let d = sa.y - (em + sb.y);
    if d >= 0 {
        // compare am·2^d with prod; am >= 2^23
        if d >= 27 {
            return 1;
        }
        var l = vec2<u32>(am, 0u);
        if d > 0 {
            l = vec2<u32>(am << u32(d), am >> u32(32 - d));
        }
        return cmp64(l, prod);
    }
    // compare am with prod·2^e, e = -d > 0; prod >= 2^23
    let e = u32(-d);
    if prod.y != 0u || prod.x >= 0x1000000u || e >= 24u {
        return -1;
    }
    let r = vec2<u32>(prod.x << e, prod.x >> (32u - e));
    return cmp64(vec2<u32>(am, 0u), r);
}

// Correctly rounded a / b (round to nearest even) for a >= 0, b > 0; quotients outside
// [1e-30, 1e30] are returned as the hardware computes them (callers clamp those).
fn div_rn(a: f32, b: f32) -> f32 {
    var q = a / b;
    if !(q >= 1e-30 && q <= 1e30) {
        return q;
    }
    for (var i = 0; i < 4; i++) {
        let bits = bitcast<u32>(q);
        let mq = (bits & 0x7fffffu) | 0x800000u;
        let eq = i32(bits >> 23u) - 150;
        let odd = (mq & 1u) == 1u;
        let up = cmp_mul(a, 2u * mq + 1u, eq - 1, b);
        if up > 0 || (up == 0 && odd) {
            q = bitcast<f32>(bits + 1u);
            continue;
        }
        var lm = 2u * mq - 1u;
        var le = eq - 1;
        if mq == 0x800000u {
            lm = 4u * mq - 1u;
            le = eq - 2;
        }
        let dn = cmp_mul(a, lm, le, b);
        if dn < 0 || (dn == 0 && odd) {
            q = bitcast<f32>(bits - 1u);
            continue;
        }
        break;
    }
    return q;
}

// round_half_away(RN(a / s)) for a >= 0, s > 0, exactly as f32 `(a / s).round()`: the
// hardware quotient (2.5 ulp) decides unless it lies near k + 0.5, where an exact
// comparison of a with the rounding boundary times s decides.
fn code_mag(a: f32, s: f32) -> f32 {
    let q = a / s;
    let t = trunc(q);
    let f = q - t;
    if t < 256.0 && abs(f - 0.5) < 0.0009765625 {
        let ti = u32(t);
        // boundary: the smallest real that rounds (RN) to t + 0.5
        var m = 0x1ffffffu;
        var e = -26;
        if ti != 0u {
            let hb = firstLeadingBit(ti);
            m = ((2u * ti + 1u) << (23u - hb)) - 1u;
            e = i32(hb) - 24;
        }
        return select(t, t + 1.0, cmp_mul(a, m, e, s) >= 0);
    }
    return select(t, t + 1.0, f >= 0.5);
}

// --- end exact rounding helpers ---

// --- dot4 helpers (identical in lowrank and decoder_tail; build.rs checks) ---

fn lane(v: u32, j: u32) -> i32 {
    return bitcast<i32>(v << (24u - 8u * j)) >> 24u;
}

fn dot4_manual(a: u32, b: u32) -> i32 {
    return lane(a, 0u) * lane(b, 0u) + lane(a, 1u) * lane(b, 1u) + lane(a, 2u) * lane(b, 2u)
        + lane(a, 3u) * lane(b, 3u);
}

fn dot4(a: u32, b: u32) -> i32 {
    if DOT4_NATIVE {
        return dot4I8Packed(a, b);
    }
    return dot4_manual(a, b);
}

fn dot4x4(a: u32, b: vec4<u32>) -> vec4<i32> {
    return vec4<i32>(dot4(a, b.x), dot4(a, b.y), dot4(a, b.z), dot4(a, b.w));
}

fn a_scale_value() -> f32 {
    if A_SCALE_DEVICE {
        return scale_buf[0];
    }
    return p.a_scale;
}

// One activation code of the fused f32 path (A_UNSIGNED: uint8pos).
fn code_of(v: f32, s: f32) -> i32 {
    if A_UNSIGNED {
        return i32(min(code_mag(max(v, 0.0), s), 255.0));
    }
    let m = i32(min(code_mag(abs(v), s), p.qmax));
    return select(m, -m, v < 0.0);
}

// Word kw of input row `row`: kind 0 = packed words, 1 = i32 codes, 2 = f32 values.
fn load_a_word(kind: u32, row: u32, kw: u32, s: f32) -> u32 {
    if kind == 0u {
        return a_in[row * p.k_words + kw];
    }
    // Lanes past K hold code 0 (as code-128 when unsigned, so that the 128·Σw correction
    // cancels the weight there: the decoder's weight is not zero past L when L < Lart).
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = kw * 4u + j;
        var c = 0;
        if e < p.k_elems {
            let raw = a_in[row * p.k_elems + e];
            c = bitcast<i32>(raw);
            if kind == 2u {
                c = code_of(bitcast<f32>(raw), s);
            }
        }
        if A_UNSIGNED {
            c = c - 128;
        }
        word = word | ((u32(c) & 0xffu) << (8u * j));
    }
    return word;
}

// Global words of the K step at k0 into registers: pa[j] = A tile element tid + j·nthreads,
// pb[j] likewise for the B tile (0 outside the problem).
fn fetch_step(
    kind: u32,
    tid: u32,
    k0: u32,
    k_end: u32,
    n0: u32,
    w_base: u32,
    s: f32,
    pa: ptr<function, array<u32, PF>>,
    pb: ptr<function, array<u32, PF>>,
) {
    let nthreads = WG_X * WG_Y;
    for (var j = 0u; j < A_PER; j++) {
        let i = tid + j * nthreads;
        let kw = k0 + (i % BK);
        var v = 0u;
        if i < BM * BK {
            let row = row_in[i / BK];
            if row != NO_ROW && kw < k_end {
                v = load_a_word(kind, row, kw, s);
            }
        }
        (*pa)[j] = v;
    }
    for (var j = 0u; j < B_PER; j++) {
        let i = tid + j * nthreads;
        let kw = k0 + i / BN;
        let n = n0 + (i % BN);
        var v = 0u;
        if i < BK * BN && kw < k_end && n < p.n_out {
            v = w[w_base + kw * p.ldw + n];
        }
        (*pb)[j] = v;
    }
}

// The tiled i8x4 GEMM of one workgroup: rows m0.. (row_in filled), columns n0.., K words
// [k_begin, k_end), weight rows at w_base + kw·ldw. Returns nothing; leaves the 8×8
// accumulators (unsigned correction applied) in `acc`.
fn gemm_tile(
    kind: u32,
    tid: u32,
    tx: u32,
    ty: u32,
    n0: u32,
    k_begin: u32,
    k_end: u32,
    w_base: u32,
    acc: ptr<function, array<vec4<i32>, 16>>,
) {
    let nthreads = WG_X * WG_Y;
    let s = a_scale_value();
    var colsum = array<vec4<i32>, 2>();
    // The next K step is fetched into registers (element tid + j·nthreads of each tile)
    // while the current one is multiplied.
    var pa: array<u32, PF>;
    var pb: array<u32, PF>;
    fetch_step(kind, tid, k_begin, k_end, n0, w_base, s, &pa, &pb);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var j = 0u; j < A_PER; j++) {
            let i = tid + j * nthreads;
            if i < BM * BK {
                a_tile[i / 4u][i % 4u] = pa[j];
            }
        }
        for (var j = 0u; j < B_PER; j++) {
            let i = tid + j * nthreads;
            if i < BK * BN {
                b_tile[i / 4u][i % 4u] = pb[j];
            }
        }
        workgroupBarrier();
        if k0 + BK < k_end {
            fetch_step(kind, tid, k0 + BK, k_end, n0, w_base, s, &pa, &pb);
        }
        for (var k4 = 0u; k4 < BK / 4u; k4++) {
            var a: array<vec4<u32>, 8>;
            for (var i = 0u; i < TM; i++) {
                a[i] = a_tile[(ty * TM + i) * (BK / 4u) + k4];
            }
            for (var kk = 0u; kk < 4u; kk++) {
                let brow = (k4 * 4u + kk) * (BN / 4u);
                let b0 = b_tile[brow + tx];
                let b1 = b_tile[brow + WG_X + tx];
                if A_UNSIGNED {
                    colsum[0] += dot4x4(ONES, b0);
                    colsum[1] += dot4x4(ONES, b1);
                }
                for (var i = 0u; i < TM; i++) {
                    let av = a[i][kk];
                    (*acc)[2u * i] += dot4x4(av, b0);
                    (*acc)[2u * i + 1u] += dot4x4(av, b1);
                }
            }
        }
        workgroupBarrier();
    }
    if A_UNSIGNED {
        for (var i = 0u; i < TM; i++) {
            (*acc)[2u * i] += 128 * colsum[0];
            (*acc)[2u * i + 1u] += 128 * colsum[1];
        }
    }
}

fn epilogue_bits(acc: i32, s: f32) -> u32 {
    if RAW_OUT {
        return bitcast<u32>(acc);
    }
    var v = (f32(acc) * p.w_scale) * s;
    if RELU {
        v = max(v, 0.0);
    }
    return bitcast<u32>(v);
}

// --- end dot4 helpers ---

// Row r of the tile: y row index of (b, h, t), or NO_ROW past M.
fn fill_rows(tid: u32, m0: u32, h: u32) {
    for (var r = tid; r < BM; r += WG_X * WG_Y) {
        let m = m0 + r;
        var row = NO_ROW;
        if m < p.m {
            let b = m / p.time;
            let t = m - b * p.time;
            row = (b * p.heads + h) * p.time + t;
        }
        row_in[r] = row;
    }
    workgroupBarrier();
}

fn decoder(kind: u32, lid: vec3<u32>, wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * WG_X + tx;
    let z = wid.z;
    let h = z / p.splits;
    let k_begin = (z - h * p.splits) * p.chunk;
    let k_end = min(k_begin + p.chunk, p.k_words);
    let m0 = (wid.y + p.tile_y0) * BM;
    let n0 = wid.x * BN;
    fill_rows(tid, m0, h);
    var acc = array<vec4<i32>, 16>();
    gemm_tile(kind, tid, tx, ty, n0, k_begin, k_end, h * p.w_head_words * p.ldw, &acc);
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        if m >= p.m {
            break;
        }
        let plane_row = (z * p.m + m) * p.n_out;
        for (var g = 0u; g < 2u; g++) {
            let v = acc[2u * i + g];
            for (var j = 0u; j < 4u; j++) {
                let n = n0 + g * (BN / 2u) + tx * 4u + j;
                if n < p.n_out {
                    out[plane_row + n] = bitcast<u32>(v[j]);
                }
            }
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn decoder_packed(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    decoder(0u, lid, wid);
}

@compute @workgroup_size(WG_X, WG_Y)
fn decoder_codes(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    decoder(1u, lid, wid);
}

@compute @workgroup_size(WG_X, WG_Y)
fn decoder_f32(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    decoder(2u, lid, wid);
}

// Float path, head z = wid.z: plane z = Σ_{l<L} (w_code·w_scale)·y in f32 (64×64 tiles,
// 16×16 invocations of 4×4: rows ty + 16·i, columns 4·tx..4·tx+3).
@compute @workgroup_size(16, 16)
fn decoder_float(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let h = wid.z;
    let m0 = (wid.y + p.tile_y0) * FT;
    let n0 = wid.x * FT;
    let ar = tid / 4u;
    let ac = (tid % 4u) * 4u;
    let am = m0 + ar;
    var a_row = NO_ROW;
    if am < p.m {
        let b = am / p.time;
        let t = am - b * p.time;
        a_row = ((b * p.heads + h) * p.time + t) * p.k_elems;
    }
    let br = tid / FT;
    let bc = tid % FT;
    let w_base = h * p.w_head_words * p.ldw;
    var acc = array<vec4<f32>, 4>();
    for (var l0 = 0u; l0 < p.k_elems; l0 += FK) {
        for (var j = 0u; j < 4u; j++) {
            let l = l0 + ac + j;
            var v = 0.0;
            if a_row != NO_ROW && l < p.k_elems {
                v = bitcast<f32>(a_in[a_row + l]);
            }
            fa_tile[ar * FK + ac + j] = v;
        }
        let kw = l0 / 4u + br;
        let n = n0 + bc;
        var word = 0u;
        if kw < p.k_words && n < p.n_out {
            word = w[w_base + kw * p.ldw + n];
        }
        for (var j = 0u; j < 4u; j++) {
            // rows past L in the last word multiply zero activations
            fb_tile[((br * 4u + j) * FT + bc) / 4u][bc % 4u] = f32(lane(word, j)) * p.w_scale;
        }
        workgroupBarrier();
        for (var k = 0u; k < FK; k++) {
            let bv = fb_tile[(k * FT) / 4u + tx];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += bv * fa_tile[(ty + 16u * i) * FK + k];
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        if m >= p.m {
            break;
        }
        let plane_row = (h * p.m + m) * p.n_out;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if n < p.n_out {
                out[plane_row + n] = bitcast<u32>(acc[i][j]);
            }
        }
    }
}

// f32 → f16 bits, round to nearest even (as `half::f16::from_f32`).
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if a > 0x7f800000u {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if a >= 0x477ff000u {
        return sign | 0x7c00u;
    }
    if a < 0x38800000u {
        if a <= 0x33000000u {
            return sign;
        }
        let e = a >> 23u;
        let m = (a & 0x7fffffu) | 0x800000u;
        let shift = 126u - e;
        let q = m >> shift;
        let rem = m & ((1u << shift) - 1u);
        let half_way = 1u << (shift - 1u);
        var r = q;
        if rem > half_way || (rem == half_way && (q & 1u) == 1u) {
            r = r + 1u;
        }
        return sign | r;
    }
    var r = (a - 0x38000000u) >> 13u;
    let rem = a & 0x1fffu;
    if rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u) {
        r = r + 1u;
    }
    return sign | r;
}

// f32 → bf16 bits, round to nearest even (as `half::bf16::from_f32`).
fn bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    if (b & 0x8000u) != 0u && (b & 0x17fffu) != 0u {
        return (b >> 16u) + 1u;
    }
    return b >> 16u;
}

fn reduce_one(e: u32, s: f32) -> f32 {
    var v: f32;
    if PARTIAL_FLOAT {
        v = 0.0;
        for (var z = 0u; z < p.planes; z++) {
            v += bitcast<f32>(part[z * p.count + e]);
        }
    } else {
        var acc = 0i;
        for (var z = 0u; z < p.planes; z++) {
            acc += bitcast<i32>(part[z * p.count + e]);
        }
        v = (f32(acc) * p.w_scale) * s;
    }
    if RELU {
        v = max(v, 0.0);
    }
    return v;
}

@compute @workgroup_size(WG_REDUCE)
fn decoder_reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let wi = (wid.y * nwg.x + wid.x) * WG_REDUCE + lid;
    if wi >= p.words {
        return;
    }
    let s = a_scale_value();
    if OUT_DTYPE == 0u {
        out[wi] = bitcast<u32>(reduce_one(wi, s));
        return;
    }
    var bits = 0u;
    for (var j = 0u; j < 2u; j++) {
        let e = wi * 2u + j;
        if e < p.count {
            let v = reduce_one(e, s);
            var hb = bf16_bits(v);
            if OUT_DTYPE == 1u {
                hb = f16_bits(v);
            }
            bits = bits | (hb << (16u * j));
        }
    }
    out[wi] = bits;
}
