// lowrank.wgsl — low-rank projection on i8x4 words:
//   out[b,h,t,n] = (Σ_d xq[b,hin,t,d]·wq[h,d,n] as f32 · w_scale) · a_scale,  n < latent_out
//
// Glossary
//   word      i8x4: byte j of a u32 holds element 4k+j along D; a partial last word is 0-padded
//   KW        ceil(D/4), words per input row; M = B·T rows per head; hin = 0 if Hin = 1 else h
//   tile, dot4, unsigned, raw: the GEMM of gemm_i8x4.wgsl; raw output (RAW_OUT) is for the
//             f16/bf16 epilogues, which decoder_reduce finishes
//
// Entries: lowrank_packed (prepacked words), lowrank_codes (i32 codes, packed while loading
// the tile), lowrank_f32 (f32, quantized exactly while loading the tile), lowrank_float (the
// float path Σ (w·w_scale)·x, f32 FMA tiles of 64×64).

// #include "common.wgsl"

override RAW_OUT: bool = false;
override EPS: f32 = 1e-8;

// #include "gemm_i8x4.wgsl"

struct Params {
    m: u32,          // rows per head, B·T
    n_out: u32,      // columns written (latent_out)
    k_words: u32,    // KW
    k_elems: u32,    // D
    time: u32,       // T
    in_heads: u32,   // Hin
    heads: u32,      // H
    ldw: u32,        // N, words per weight row
    w_scale: f32,
    a_scale: f32,    // host scale (A_SCALE_DEVICE = false)
    qmax: f32,       // lowrank_f32: code range
    tile_y0: u32,    // first M tile of this dispatch (grids are split at 65535)
}

@group(0) @binding(0) var<uniform> p: Params;

// Row r of the tile: input row index of (b, hin, t), or NO_ROW past M.
fn fill_rows(tid: u32, m0: u32, h: u32) {
    let hin = select(h, 0u, p.in_heads == 1u);
    for (var r = tid; r < BM; r += WG_X * WG_Y) {
        let m = m0 + r;
        var row = NO_ROW;
        if m < p.m {
            let b = m / p.time;
            let t = m - b * p.time;
            row = (b * p.in_heads + hin) * p.time + t;
        }
        row_in[r] = row;
    }
    workgroupBarrier();
}

fn lowrank(kind: u32, lid: vec3<u32>, wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * WG_X + tx;
    let h = wid.z;
    let m0 = (wid.y + p.tile_y0) * BM;
    let n0 = wid.x * BN;
    fill_rows(tid, m0, h);
    var acc = array<vec4<i32>, 16>();
    gemm_tile(kind, tid, tx, ty, n0, 0u, p.k_words, h * p.k_words * p.ldw, &acc);
    let s = a_scale_value();
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        if m >= p.m {
            break;
        }
        let b = m / p.time;
        let t = m - b * p.time;
        let out_row = ((b * p.heads + h) * p.time + t) * p.n_out;
        for (var g = 0u; g < 2u; g++) {
            let v = acc[2u * i + g];
            for (var j = 0u; j < 4u; j++) {
                let n = n0 + g * (BN / 2u) + tx * 4u + j;
                if n < p.n_out {
                    out[out_row + n] = epilogue_bits(v[j], s);
                }
            }
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn lowrank_packed(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    lowrank(0u, lid, wid);
}

@compute @workgroup_size(WG_X, WG_Y)
fn lowrank_codes(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    lowrank(1u, lid, wid);
}

@compute @workgroup_size(WG_X, WG_Y)
fn lowrank_f32(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    lowrank(2u, lid, wid);
}

// Float path: out = Σ_d (w_code·w_scale)·x in f32, 64×64 tiles, 16×16 invocations of 4×4
// (rows ty + 16·i, columns 4·tx..4·tx+3). RAW_OUT writes the plain sum (no relu).
@compute @workgroup_size(16, 16)
fn lowrank_float(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let h = wid.z;
    let m0 = (wid.y + p.tile_y0) * FT;
    let n0 = wid.x * FT;
    let hin = select(h, 0u, p.in_heads == 1u);
    // each invocation loads 4 activations (rows tid / 4 .. , FK/4 consecutive d) and one
    // weight word (4 d × 1 column)
    let ar = tid / 4u;
    let ac = (tid % 4u) * 4u;
    let am = m0 + ar;
    var a_row = NO_ROW;
    if am < p.m {
        let b = am / p.time;
        let t = am - b * p.time;
        a_row = ((b * p.in_heads + hin) * p.time + t) * p.k_elems;
    }
    let br = tid / FT;        // word row within the step (0..3)
    let bc = tid % FT;
    let w_base = h * p.k_words * p.ldw;
    var acc = array<vec4<f32>, 4>();
    for (var d0 = 0u; d0 < p.k_elems; d0 += FK) {
        for (var j = 0u; j < 4u; j++) {
            let d = d0 + ac + j;
            var v = 0.0;
            if a_row != NO_ROW && d < p.k_elems {
                v = bitcast<f32>(a_in[a_row + d]);
            }
            fa_tile[ar * FK + ac + j] = v;
        }
        let kw = d0 / 4u + br;
        let n = n0 + bc;
        var word = 0u;
        if kw < p.k_words && n < p.n_out {
            word = w[w_base + kw * p.ldw + n];
        }
        for (var j = 0u; j < 4u; j++) {
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
        let b = m / p.time;
        let t = m - b * p.time;
        let out_row = ((b * p.heads + h) * p.time + t) * p.n_out;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if n < p.n_out {
                var v = acc[i][j];
                if RELU && !RAW_OUT {
                    v = select(0.0, v, v > 0.0);
                }
                out[out_row + n] = bitcast<u32>(v);
            }
        }
    }
}
