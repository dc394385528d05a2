// quantize.wgsl — per-tensor activation quantization on the device.
//
// Glossary
//   absmean   mean of |x| (uint8pos: of max(x, 0)); scale = max(max(2·mean, EPS)/qmax, EPS)
//   code      clamp(round_half_away(x / scale), -qmax, qmax)   (uint8pos: [0, 255] of max(x, 0))
//   word      i8x4: byte j of a u32 holds element 4k+j of the row; a partial last word is 0-padded
//   df        double-float (hi, lo): a sum carried with error-free TwoSum, ~48 bits of mantissa
//   group     linear workgroup id over a 2D grid (x fastest) so counts may exceed 65535
//
// Entries: absmean_scale (PASS 0: one df partial per workgroup; PASS 1: one workgroup folds
// the partials in a fixed tree and writes the scale), quantize_codes (one i32 code per
// element), quantize_pack_i8x4 (one signed word per invocation). Every reduction order is
// fixed, so results are deterministic run to run.

override WG: u32 = 256u;          // invocations per workgroup (a power of two)
override ITEMS: u32 = 16u;        // elements per invocation in absmean PASS 0
override PASS: u32 = 0u;          // absmean_scale pass
override A_UNSIGNED: bool = false;   // uint8pos codes of max(x, 0)
override SCALE_DEVICE: bool = false; // scale from scale_buf[0] instead of p.scale
override EPS: f32 = 1e-8;

struct Params {
    len: u32,       // elements
    k: u32,         // row length (elements)
    k_words: u32,   // ceil(k / 4)
    count: u32,     // words (pack) or partials (absmean PASS 1)
    qmax: f32,
    scale: f32,     // host scale
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> scale_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

var<workgroup> red: array<vec2<f32>, WG>;

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

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = a + b;
    let bb = s - a;
    return vec2<f32>(s, (a - (s - bb)) + (b - bb));
}

fn df_add(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let s = two_sum(x.x, y.x);
    let lo = s.y + (x.y + y.y);
    let hi = s.x + lo;
    return vec2<f32>(hi, lo - (hi - s.x));
}

fn magnitude(v: f32) -> f32 {
    if A_UNSIGNED {
        return max(v, 0.0);
    }
    return abs(v);
}

fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

fn scale_value() -> f32 {
    if SCALE_DEVICE {
        return scale_buf[0];
    }
    return p.scale;
}

fn code_of(v: f32, s: f32) -> i32 {
    if A_UNSIGNED {
        return i32(min(code_mag(max(v, 0.0), s), 255.0));
    }
    let m = i32(min(code_mag(abs(v), s), p.qmax));
    return select(m, -m, v < 0.0);
}

@compute @workgroup_size(WG)
fn absmean_scale(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let group = group_id(wid, nwg);
    var acc = vec2<f32>(0.0, 0.0);
    if PASS == 0u {
        let base = group * WG * ITEMS;
        for (var i = 0u; i < ITEMS; i++) {
            let idx = base + i * WG + lid;
            if idx < p.len {
                acc = df_add(acc, vec2<f32>(magnitude(x[idx]), 0.0));
            }
        }
    } else {
        for (var i = lid; i < p.count; i += WG) {
            acc = df_add(acc, partials[i]);
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            red[lid] = df_add(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let total = red[0];
        if PASS == 0u {
            partials[group] = total;
        } else {
            let n = f32(p.len);
            let mean = total.x / n + total.y / n;
            scale_buf[0] = max(div_rn(max(2.0 * mean, EPS), p.qmax), EPS);
        }
    }
}

@compute @workgroup_size(WG)
fn quantize_codes(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = group_id(wid, nwg) * WG + lid;
    if idx >= p.len {
        return;
    }
    out[idx] = bitcast<u32>(code_of(x[idx], scale_value()));
}

@compute @workgroup_size(WG)
fn quantize_pack_i8x4(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_id(wid, nwg) * WG + lid;
    if w >= p.count {
        return;
    }
    let s = scale_value();
    let row = w / p.k_words;
    let kw = w - row * p.k_words;
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = kw * 4u + j;
        var c = 0;
        if e < p.k {
            c = code_of(x[row * p.k + e], s);
        }
        if A_UNSIGNED {
            // the projections' unsigned lane form (never a public output: uint8pos codes
            // above 127 do not fit a signed lane)
            c = c - 128;
        }
        word = word | ((u32(c) & 0xffu) << (8u * j));
    }
    out[w] = word;
}
