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
//   tile, dot4, unsigned: the GEMM of gemm_i8x4.wgsl, shared with lowrank.wgsl
//   epilogue  (acc·w_scale)·a_scale, relu, then f32, or f16/bf16 rounded to nearest even
//             (two per u32 word, element 2i in the low half)
//
// Entries: decoder_packed, decoder_codes, decoder_f32 (i8x4 GEMM chunks → partial planes),
// decoder_float (float path, one f32 plane per head), decoder_reduce (planes → output; also
// finishes the f16/bf16 epilogues of the lowrank kernels, one plane).

// #include "common.wgsl"

override RAW_OUT: bool = true;        // GEMM entries always write raw partials
override PARTIAL_FLOAT: bool = false; // decoder_reduce: planes hold f32 sums (float path)
override OUT_DTYPE: u32 = 0u;         // decoder_reduce: 0 f32, 1 f16, 2 bf16
override EPS: f32 = 1e-8;

// #include "gemm_i8x4.wgsl"

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
@group(0) @binding(5) var<storage, read> part: array<u32>;

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
        v = select(0.0, v, v > 0.0);  // -0.0 and NaN give +0.0, as on every backend
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
