// gemm_i8x4.wgsl — the tiled i8x4 GEMM that lowrank.wgsl and decoder_tail.wgsl share
// (`// #include "gemm_i8x4.wgsl"`, after `// #include "common.wgsl"`).
//
// Glossary
//   word      i8x4: byte j of a u32 holds element 4k+j along K; a partial last word is 0-padded
//   tile      BM×BN outputs per workgroup (BM = 8·WG_Y, BN = 8·WG_X), K stepped BK words at a
//             time through workgroup memory; each invocation owns 8 rows × 8 columns (two
//             groups of 4 adjacent columns, BN/2 apart, so vec4 tile reads are conflict-free)
//   row_in    the input row of each tile row (NO_ROW past M), filled by the including shader
//   dot4      dot4I8Packed (native OpSDot where the adapter has it) or a manual unpack
//             (DOT4_NATIVE = false), selected by an override so both are testable anywhere
//   unsigned  uint8pos codes (0..255) go in a lane as code-128; Σ code·w = Σ (code-128)·w +
//             128·Σ w, and Σ w per column comes from dot4(0x01010101, w)
//   raw       RAW_OUT writes the i32 accumulator (bitcast) instead of the dequantized value
//
// The including shader declares `override RAW_OUT: bool` (before this include, as it must
// every override: build.rs says why) and binding 0, `p`, a uniform `Params` with at least m
// (rows), n_out (columns), k_words, k_elems, ldw (words per weight row), w_scale, a_scale
// (host scale) and qmax (the fused f32 path's code range).

override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override BK: u32 = 32u;              // K words per step, a multiple of 4
override DOT4_NATIVE: bool = true;
override A_UNSIGNED: bool = false;
override A_SCALE_DEVICE: bool = false;
override RELU: bool = false;

override BM: u32 = WG_Y * 8u;
override BN: u32 = WG_X * 8u;
// Prefetched words per invocation and K step: A and B tile elements over invocations
// (at most PF; TileConfig::valid checks).
override A_PER: u32 = (BM * BK + WG_X * WG_Y - 1u) / (WG_X * WG_Y);
override B_PER: u32 = (BK * BN + WG_X * WG_Y - 1u) / (WG_X * WG_Y);

const TM: u32 = 8u;
const PF: u32 = 32u;               // register prefetch capacity (words of A and of B)
const ONES: u32 = 0x01010101u;

// Float path tiles (lowrank_float, decoder_float): 16×16 invocations, 4×4 outputs each, FK
// elements per step.
const FT: u32 = 64u;
const FK: u32 = 16u;

// words (packed), i32 codes or f32 values, by entry; read as raw bits
@group(0) @binding(1) var<storage, read> a_in: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> scale_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

var<workgroup> a_tile: array<vec4<u32>, BM * BK / 4u>;
var<workgroup> b_tile: array<vec4<u32>, BK * BN / 4u>;
var<workgroup> row_in: array<u32, BM>;
var<workgroup> fa_tile: array<f32, FT * FK>;
var<workgroup> fb_tile: array<vec4<f32>, FK * FT / 4u>;

const NO_ROW: u32 = 0xffffffffu;

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
        v = select(0.0, v, v > 0.0);  // -0.0 and NaN give +0.0, as on every backend
    }
    return bitcast<u32>(v);
}
