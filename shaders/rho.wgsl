// rho.wgsl — int8 block compression of the rho state (blocks of 32 over the flattened tensor).
//
// Glossary
//   block     32 consecutive elements; scale = max(max|v| / 127, EPS) (correctly rounded),
//             code = clamp(round_half_away(v / scale), ±127)
//   word      i8x4: byte j of a u32 holds element 4k+j of the block; 8 words per block, the
//             last block's missing elements are zero lanes
//   group     linear workgroup id over a 2D grid (x fastest) so counts may exceed 65535
//
// Entries: rho_int8_pack (8 invocations per block, one word each; the block max is a fixed
// 8-way tree in workgroup memory), rho_int8_unpack (one element per invocation:
// code · scale).

override EPS: f32 = 1e-8;

const WG: u32 = 256u;
const BLOCK: u32 = 32u;
const WORDS_PER_BLOCK: u32 = 8u;

struct Params {
    len: u32,      // elements
    blocks: u32,
    words: u32,    // blocks · 8
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> words: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;
// rho_int8_unpack reads words/scales from bindings 4/5 and writes binding 6
@group(0) @binding(4) var<storage, read> in_words: array<u32>;
@group(0) @binding(5) var<storage, read> in_scales: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_values: array<f32>;

var<workgroup> block_max: array<f32, WG>;

// #include "common.wgsl"

fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(WG)
fn rho_int8_pack(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let gw = group_id(wid, nwg) * WG + lid;   // word index
    let block = gw / WORDS_PER_BLOCK;
    var v = vec4<f32>(0.0);
    var m = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let e = gw * 4u + j;
        if block < p.blocks && e < p.len {
            v[j] = values[e];
            m = max(m, abs(v[j]));
        }
    }
    block_max[lid] = m;
    workgroupBarrier();
    for (var s = 4u; s > 0u; s = s / 2u) {
        if (lid & 7u) < s {
            block_max[lid] = max(block_max[lid], block_max[lid + s]);
        }
        workgroupBarrier();
    }
    if block >= p.blocks {
        return;
    }
    let scale = max(div_rn(block_max[lid & ~7u], 127.0), EPS);
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let c = i32(min(code_mag(abs(v[j]), scale), 127.0));
        word = word | ((u32(select(c, -c, v[j] < 0.0)) & 0xffu) << (8u * j));
    }
    words[gw] = word;
    if (lid & 7u) == 0u {
        scales[block] = scale;
    }
}

@compute @workgroup_size(WG)
fn rho_int8_unpack(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = group_id(wid, nwg) * WG + lid;
    if e >= p.len {
        return;
    }
    let c = bitcast<i32>(in_words[e / 4u] << (24u - 8u * (e % 4u))) >> 24u;
    out_values[e] = f32(c) * in_scales[e / BLOCK];
}
