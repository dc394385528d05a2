//! Helpers shared by the differential tests, `lowbit verify` and the benches: a seeded RNG,
//! error reports (max-abs, NMSE, worst index), poison values and the `LOWBIT_REQUIRE` rule.
//!
//! Public so that the test crates and the CLI use one implementation; not part of the stable API.

use crate::error::BackendKind;

/// Outputs are filled with this before a launch; a NaN left afterwards was never written.
pub const POISON_F32: f32 = f32::NAN;
/// Poison for integer outputs (a value no kernel writes).
pub const POISON_U32: u32 = 0xDEAD_BEEF;
/// Named tolerances.
pub mod tol {
    /// Device-computed scales vs. the reference's f64-summed scale (relative).
    pub const DEVICE_SCALE_REL: f32 = 1.0e-6;
    /// Float-path projections (different f32 summation orders), NMSE bound.
    pub const FLOAT_PATH_NMSE: f64 = 1.0e-10;
    /// Float-path projections, max abs error relative to max |ref|.
    pub const FLOAT_PATH_REL: f32 = 1.0e-5;
}

/// SplitMix64: small, seeded, reproducible; enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next raw 64-bit output of the SplitMix64 sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform integer in `[lo, hi]`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Uniform `usize` in `[lo, hi]` (inclusive, like [`Rng::int`]).
    pub fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.int(lo as i64, hi as i64) as usize
    }
    /// Approximately normal (sum of 4 uniforms), mean 0, std ≈ `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * std * 1.732
    }
    /// `n` samples of [`Rng::normal`] with standard deviation ≈ `std`.
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(std)).collect()
    }
    /// Ternary codes with roughly a third zeros.
    pub fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.int(-1, 1) as i8).collect()
    }
    /// int8 codes in `[-127, 127]`.
    pub fn int8_codes(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.int(-127, 127) as i8).collect()
    }
}

/// How far `actual` is from `expected`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorReport {
    /// Elements compared: `expected.len()`.
    pub len: usize,
    /// Largest `|actual − expected|`; infinite if a length differs or any `actual` is non-finite.
    pub max_abs: f32,
    /// Index of the worst element (`max_abs`), or of the first non-finite one.
    pub worst_index: usize,
    /// `expected[worst_index]`.
    pub expected_at_worst: f32,
    /// `actual[worst_index]`.
    pub actual_at_worst: f32,
    /// `Σ (a-e)² / Σ e²` in f64 (0 when both are all zeros).
    pub nmse: f64,
    /// Elements whose bits differ.
    pub mismatches: usize,
    /// Elements of `actual` that are NaN/Inf (unwritten poison shows up here).
    pub non_finite: usize,
    /// Largest `|expected|`, the base of relative tolerances such as `tol::FLOAT_PATH_REL`.
    pub max_abs_expected: f32,
}

impl ErrorReport {
    /// Whether every element matches bit for bit (±0 count as equal) and none is non-finite.
    pub fn bit_exact(&self) -> bool {
        self.mismatches == 0 && self.non_finite == 0
    }
}

impl std::fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "len={} max_abs={:.3e} nmse={:.3e} mismatches={} non_finite={} worst[{}]: expected {} got {}",
            self.len,
            self.max_abs,
            self.nmse,
            self.mismatches,
            self.non_finite,
            self.worst_index,
            self.expected_at_worst,
            self.actual_at_worst
        )
    }
}

/// Compares two f32 slices element by element. Lengths must match (a mismatch reports
/// every element as wrong).
pub fn compare_f32(expected: &[f32], actual: &[f32]) -> ErrorReport {
    let mut r = ErrorReport {
        len: expected.len(),
        ..Default::default()
    };
    if expected.len() != actual.len() {
        r.mismatches = expected.len().max(actual.len());
        r.max_abs = f32::INFINITY;
        r.nmse = f64::INFINITY;
        return r;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut first_bad: Option<usize> = None;
    for (i, (&e, &a)) in expected.iter().zip(actual).enumerate() {
        r.max_abs_expected = r.max_abs_expected.max(e.abs());
        if e.to_bits() != a.to_bits() && !(e == 0.0 && a == 0.0) {
            r.mismatches += 1;
        }
        if !a.is_finite() {
            r.non_finite += 1;
            first_bad.get_or_insert(i);
            continue;
        }
        let d = (a - e).abs();
        if d > r.max_abs || (i == 0 && r.max_abs == 0.0) {
            if d > r.max_abs {
                r.max_abs = d;
            }
            r.worst_index = i;
        }
        num += f64::from(a - e).powi(2);
        den += f64::from(e).powi(2);
    }
    if let Some(i) = first_bad {
        r.worst_index = i;
        r.max_abs = f32::INFINITY;
    }
    r.nmse = if r.non_finite > 0 {
        f64::INFINITY
    } else if den == 0.0 {
        if num == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        num / den
    };
    if let (Some(&e), Some(&a)) = (expected.get(r.worst_index), actual.get(r.worst_index)) {
        r.expected_at_worst = e;
        r.actual_at_worst = a;
    }
    r
}

/// Backends listed in `LOWBIT_REQUIRE` (comma-separated: `cuda`, `wgpu`).
pub fn required_backends() -> Vec<BackendKind> {
    std::env::var("LOWBIT_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Some(BackendKind::Cuda),
            "wgpu" => Some(BackendKind::Wgpu),
            "cpu" => Some(BackendKind::Cpu),
            _ => None,
        })
        .collect()
}

/// What a test does when its backend is absent: prints `SKIPPED: <reason>` loudly and returns
/// `Ok(())`, unless the backend is in `LOWBIT_REQUIRE`, in which case it returns the error text
/// for the test to fail with.
pub fn skip_or_fail(backend: BackendKind, reason: &str) -> Result<(), String> {
    if required_backends().contains(&backend) {
        Err(format!(
            "{backend} required by LOWBIT_REQUIRE but unavailable: {reason}"
        ))
    } else {
        eprintln!("SKIPPED: no {backend} backend: {reason}");
        println!("SKIPPED: no {backend} backend: {reason}");
        Ok(())
    }
}
