// common.wgsl — exact rounding helpers, included by every shader
// (`// #include "common.wgsl"`).
//
// Glossary
//   RN        round to nearest, ties to even (IEEE division)
//   code_mag  round_half_away(RN(a / s)) for a >= 0, bit for bit as the CPU reference's
//             `(a / s).round()`, though the hardware quotient may be off by 2.5 ulp
//   wide      a u32 pair (lo, hi): a 64-bit integer, WGSL having none


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
