//! Storage formats: property round trips of every packer/codec (sizes that are not multiples
//! of 4, 8 or 32), the invalid patterns (ternary `0b11`, set padding bits, nonzero padding
//! lanes), and a fuzz test of the artifact loader: random bytes, every truncation and byte
//! corruptions of a valid file must give `Err` or a valid artifact, never a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lowbit_kernels::artifact::PackedWeightArtifact;
use lowbit_kernels::config::{LowBitWeightFormat, RhoCompressionConfig};
use lowbit_kernels::error::LowbitError;
use lowbit_kernels::pack::{
    PackedTernaryBuffer, pack_binary_1bit, pack_decoder_input_codes_i8x4,
    pack_decoder_weight_codes_i8x4, pack_lowrank_input_codes_i8x4, pack_lowrank_weight_codes_i8x4,
    pack_ternary_2bit, pack_ternary2_fragments, ternary2_rows, unpack_binary_1bit,
    unpack_decoder_input_codes_i8x4, unpack_decoder_weight_codes_i8x4,
    unpack_lowrank_input_codes_i8x4, unpack_lowrank_weight_codes_i8x4, unpack_ternary_2bit,
    unpack_ternary2_fragments,
};
use lowbit_kernels::rho::{
    PackedRhoBlockEncoding, RhoCompressionStats, pack_rho_block_state_with,
    pack_rho_int8_block_state_device_with, unpack_rho_block_state,
    unpack_rho_int8_block_state_device,
};
use lowbit_kernels::testing::Rng;
use proptest::prelude::*;

fn ternary_codes(max_len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(-1i8..=1, 0..max_len)
}

fn binary_codes(max_len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop::collection::vec(
        prop::bool::ANY.prop_map(|b| if b { 1i8 } else { -1 }),
        0..max_len,
    )
}

/// int8 codes in `[-127, 127]` for `n` elements.
fn int8_codes(seed: u64, n: usize) -> Vec<i8> {
    Rng::new(seed).int8_codes(n)
}

/// The element behind lane `j` of word `w` of row `(o, i)` of a `[outer, k, inner]` packing.
fn lane_of(codes: &[i8], k: usize, inner: usize, o: usize, w: usize, j: usize, i: usize) -> i8 {
    let kk = 4 * w + j;
    if kk < k {
        codes[(o * k + kk) * inner + i]
    } else {
        0
    }
}

/// Checks words against the SPEC layout: byte `j` of word `(o, w, i)` = element `4w+j`.
fn check_layout(codes: &[i8], words: &[u32], outer: usize, k: usize, inner: usize) {
    let kw = k.div_ceil(4);
    assert_eq!(words.len(), outer * kw * inner);
    for o in 0..outer {
        for w in 0..kw {
            for i in 0..inner {
                let bytes = words[(o * kw + w) * inner + i].to_le_bytes();
                for (j, &b) in bytes.iter().enumerate() {
                    assert_eq!(b as i8, lane_of(codes, k, inner, o, w, j, i));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ternary_2bit_round_trips(codes in ternary_codes(203)) {
        let packed = pack_ternary_2bit(&codes).unwrap();
        prop_assert_eq!(packed.packed.len(), codes.len().div_ceil(4));
        prop_assert_eq!(packed.len, codes.len());
        for (i, &c) in codes.iter().enumerate() {
            prop_assert_eq!((packed.packed[i / 4] >> (2 * (i % 4))) & 0b11, (c + 1) as u8);
        }
        prop_assert_eq!(unpack_ternary_2bit(&packed).unwrap(), codes);
    }

    #[test]
    fn ternary_0b11_is_an_error(codes in ternary_codes(203), pick in any::<prop::sample::Index>()) {
        prop_assume!(!codes.is_empty());
        let mut packed = pack_ternary_2bit(&codes).unwrap();
        let i = pick.index(codes.len());
        packed.packed[i / 4] |= 0b11 << (2 * (i % 4));
        let err = unpack_ternary_2bit(&packed).unwrap_err();
        // The first 0b11 is the one we wrote (valid codes never hold it).
        let at = match err {
            LowbitError::InvalidTernaryCode { index } => Some(index),
            _ => None,
        };
        prop_assert_eq!(at, Some(i));
    }

    #[test]
    fn ternary_padding_bits_are_an_error(codes in ternary_codes(203), bit in 0u32..8) {
        let used = 2 * (codes.len() % 4);
        prop_assume!(used != 0 && (bit as usize) >= used);
        let mut packed = pack_ternary_2bit(&codes).unwrap();
        *packed.packed.last_mut().unwrap() |= 1 << bit;
        prop_assert!(unpack_ternary_2bit(&packed).is_err());
    }

    #[test]
    fn ternary_wrong_byte_count_is_an_error(codes in ternary_codes(203)) {
        let packed = pack_ternary_2bit(&codes).unwrap();
        let mut longer = packed.clone();
        longer.packed.push(0);
        prop_assert!(unpack_ternary_2bit(&longer).is_err());
        if !codes.is_empty() {
            let short = PackedTernaryBuffer {
                packed: packed.packed[..packed.packed.len() - 1].to_vec(),
                len: codes.len(),
            };
            prop_assert!(unpack_ternary_2bit(&short).is_err());
        }
    }

    #[test]
    fn binary_1bit_round_trips(codes in binary_codes(203)) {
        let packed = pack_binary_1bit(&codes).unwrap();
        prop_assert_eq!(packed.len(), codes.len().div_ceil(8));
        for (i, &c) in codes.iter().enumerate() {
            prop_assert_eq!((packed[i / 8] >> (i % 8)) & 1 == 1, c == 1);
        }
        prop_assert_eq!(unpack_binary_1bit(&packed, codes.len()).unwrap(), codes);
    }

    #[test]
    fn binary_padding_bits_are_an_error(codes in binary_codes(203), bit in 0u32..8) {
        let used = codes.len() % 8;
        prop_assume!(used != 0 && (bit as usize) >= used);
        let mut packed = pack_binary_1bit(&codes).unwrap();
        *packed.last_mut().unwrap() |= 1 << bit;
        prop_assert!(unpack_binary_1bit(&packed, codes.len()).is_err());
    }

    #[test]
    fn invalid_codes_do_not_pack(v in any::<i8>()) {
        prop_assert_eq!(pack_ternary_2bit(&[0, v]).is_ok(), (-1..=1).contains(&v));
        prop_assert_eq!(pack_binary_1bit(&[1, v]).is_ok(), v == 1 || v == -1);
    }

    #[test]
    fn lowrank_weight_i8x4_round_trips(
        heads in 1usize..4, embd in 1usize..23, latent in 1usize..7, seed in any::<u64>()
    ) {
        let codes = int8_codes(seed, heads * embd * latent);
        let words = pack_lowrank_weight_codes_i8x4(&codes, heads, embd, latent).unwrap();
        check_layout(&codes, &words, heads, embd, latent);
        prop_assert_eq!(
            unpack_lowrank_weight_codes_i8x4(&words, heads, embd, latent).unwrap(),
            codes
        );
    }

    #[test]
    fn decoder_weight_i8x4_round_trips(
        heads in 1usize..4, latent in 1usize..23, dim in 1usize..7, seed in any::<u64>()
    ) {
        let codes = int8_codes(seed, heads * latent * dim);
        let words = pack_decoder_weight_codes_i8x4(&codes, heads, latent, dim).unwrap();
        check_layout(&codes, &words, heads, latent, dim);
        prop_assert_eq!(
            unpack_decoder_weight_codes_i8x4(&words, heads, latent, dim).unwrap(),
            codes
        );
    }

    #[test]
    fn lowrank_input_i8x4_round_trips(
        batch in 1usize..3, heads in 1usize..3, time in 1usize..4, embd in 1usize..23,
        seed in any::<u64>()
    ) {
        let codes = int8_codes(seed, batch * heads * time * embd);
        let words = pack_lowrank_input_codes_i8x4(&codes, batch, heads, time, embd).unwrap();
        check_layout(&codes, &words, batch * heads * time, embd, 1);
        prop_assert_eq!(
            unpack_lowrank_input_codes_i8x4(&words, batch, heads, time, embd).unwrap(),
            codes
        );
    }

    #[test]
    fn decoder_input_i8x4_round_trips(
        batch in 1usize..3, heads in 1usize..3, time in 1usize..4, latent in 1usize..23,
        seed in any::<u64>()
    ) {
        let codes = int8_codes(seed, batch * heads * time * latent);
        let words = pack_decoder_input_codes_i8x4(&codes, batch, heads, time, latent).unwrap();
        check_layout(&codes, &words, batch * heads * time, latent, 1);
        prop_assert_eq!(
            unpack_decoder_input_codes_i8x4(&words, batch, heads, time, latent).unwrap(),
            codes
        );
    }

    #[test]
    fn i8x4_nonzero_padding_lanes_and_bad_lengths_are_errors(
        rows in 1usize..4, k in 1usize..23, seed in any::<u64>()
    ) {
        let codes = int8_codes(seed, rows * k);
        let mut words = pack_lowrank_input_codes_i8x4(&codes, 1, 1, rows, k).unwrap();
        prop_assert!(unpack_lowrank_input_codes_i8x4(&words[1..], 1, 1, rows, k).is_err());
        prop_assert!(unpack_decoder_weight_codes_i8x4(&words[1..], 1, k, rows).is_err());
        if k % 4 != 0 {
            let last = words.len() - 1;
            words[last] |= 0x7F << (8 * 3);
            prop_assert!(unpack_lowrank_input_codes_i8x4(&words, 1, 1, rows, k).is_err());
            prop_assert!(unpack_decoder_input_codes_i8x4(&words, 1, 1, rows, k).is_err());
        }
    }

    #[test]
    fn artifact_safetensors_round_trips(
        dims in prop::collection::vec(1usize..7, 1..=4),
        format in prop::sample::select(vec![
            LowBitWeightFormat::Int8,
            LowBitWeightFormat::Sign1,
            LowBitWeightFormat::Ternary158,
            LowBitWeightFormat::Packed2,
        ]),
        seed in any::<u64>(),
    ) {
        let n: usize = dims.iter().product();
        let values = Rng::new(seed).normals(n, 1.0);
        let artifact = PackedWeightArtifact::from_values(&values, &dims, format).unwrap();
        let bytes = artifact.to_safetensors_bytes().unwrap();
        let loaded = PackedWeightArtifact::from_safetensors_bytes(&bytes).unwrap();
        prop_assert_eq!(loaded.codes().unwrap(), artifact.codes().unwrap());
        prop_assert_eq!(loaded.scale.to_bits(), artifact.scale.to_bits());
        prop_assert_eq!(loaded, artifact);
    }

    #[test]
    fn rho_pack_unpack_shapes(
        shape in prop::array::uniform4(1usize..9),
        compression in prop::sample::select(vec![
            RhoCompressionConfig::Int8BlockExp,
            RhoCompressionConfig::TernaryBlockExp,
            RhoCompressionConfig::BinaryBlockExp,
        ]),
        seed in any::<u64>(),
    ) {
        let n: usize = shape.iter().product();
        let values = Rng::new(seed).normals(n, 2.0);
        let stats = RhoCompressionStats::new();
        let state = pack_rho_block_state_with(&values, shape, compression, &stats).unwrap();
        prop_assert_eq!(state.logical_shape, shape);
        prop_assert_eq!(state.scales.len(), n.div_ceil(32));
        let encoding = PackedRhoBlockEncoding::from_compression(compression).unwrap();
        prop_assert_eq!(state.packed.len(), encoding.packed_len(n));
        let restored = unpack_rho_block_state(&state).unwrap();
        prop_assert_eq!(restored.len(), n);
        if encoding == PackedRhoBlockEncoding::Int8 {
            // Each element is within half a step of its block's scale, plus the rounding of
            // code·scale at an exact tie (e.g. v/s = 103.5 gives |v - 104·s| = s/2 + ulp).
            for (i, (a, b)) in values.iter().zip(&restored).enumerate() {
                let bound = state.scales[i / 32] * 0.5 + a.abs() * 2.0 * f32::EPSILON;
                prop_assert!((a - b).abs() <= bound);
            }
            let device = pack_rho_int8_block_state_device_with(&values, shape, &stats).unwrap();
            prop_assert_eq!(device.words.len(), n.div_ceil(32) * 8);
            prop_assert_eq!(unpack_rho_int8_block_state_device(&device).unwrap(), restored);
        }
        // A state that lost a byte or a scale is an error, not a panic.
        let mut short = state.clone();
        short.packed.pop();
        prop_assert!(unpack_rho_block_state(&short).is_err());
        let mut short = state;
        short.scales.pop();
        prop_assert!(unpack_rho_block_state(&short).is_err());
    }
}

/// Feeds `bytes` to the loader; panics are caught and reported as `None`.
fn load_no_panic(bytes: &[u8]) -> Option<Result<PackedWeightArtifact, LowbitError>> {
    catch_unwind(AssertUnwindSafe(|| {
        PackedWeightArtifact::from_safetensors_bytes(bytes)
    }))
    .ok()
}

#[derive(Default, Debug)]
struct FuzzCounts {
    ok: usize,
    err: usize,
}

impl FuzzCounts {
    fn feed(&mut self, what: &str, bytes: &[u8]) {
        match load_no_panic(bytes) {
            None => panic!(
                "{what}: the artifact loader panicked on {} bytes",
                bytes.len()
            ),
            Some(Ok(artifact)) => {
                // Anything accepted must be a fully valid artifact.
                artifact
                    .validate()
                    .unwrap_or_else(|e| panic!("{what}: loader accepted an invalid artifact: {e}"));
                artifact.codes().unwrap();
                self.ok += 1;
            }
            Some(Err(_)) => self.err += 1,
        }
    }
}

fn valid_artifact_files() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0xA27);
    [
        (vec![2usize, 5, 3], LowBitWeightFormat::Ternary158),
        (vec![7, 3], LowBitWeightFormat::Sign1),
        (vec![3, 2, 1, 5], LowBitWeightFormat::Int8),
    ]
    .into_iter()
    .map(|(shape, format)| {
        let values = rng.normals(shape.iter().product(), 1.0);
        PackedWeightArtifact::from_values(&values, &shape, format)
            .unwrap()
            .to_safetensors_bytes()
            .unwrap()
    })
    .collect()
}

#[test]
fn artifact_loader_never_panics() {
    let mut rng = Rng::new(0xF022);

    let mut random = FuzzCounts::default();
    for i in 0..10_000 {
        let len = rng.usize(0, 300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half of them start with a plausible header length so parsing gets past it.
        if i % 2 == 0 && len >= 8 {
            let header_len = rng.usize(0, len - 8) as u64;
            bytes[..8].copy_from_slice(&header_len.to_le_bytes());
            if len > 8 && header_len > 0 {
                bytes[8] = b'{';
            }
        }
        random.feed("random bytes", &bytes);
    }

    let mut truncated = FuzzCounts::default();
    let mut corrupted = FuzzCounts::default();
    for file in valid_artifact_files() {
        for cut in 0..=file.len() {
            truncated.feed("truncation", &file[..cut]);
        }
        // Every byte, with each single-bit flip, plus random byte values.
        for pos in 0..file.len() {
            for bit in 0..8 {
                let mut bytes = file.clone();
                bytes[pos] ^= 1 << bit;
                corrupted.feed("bit flip", &bytes);
            }
            let mut bytes = file.clone();
            bytes[pos] = rng.next_u64() as u8;
            corrupted.feed("byte corruption", &bytes);
        }
    }

    println!(
        "artifact fuzz: random bytes ok={} err={}; truncations ok={} err={}; \
         single-byte corruptions ok={} err={}",
        random.ok, random.err, truncated.ok, truncated.err, corrupted.ok, corrupted.err
    );
    assert_eq!(random.ok + random.err, 10_000);
    // Only the untruncated file loads.
    assert_eq!(truncated.ok, 3);
    assert!(corrupted.err > 0);
}

/// Ternary2 fragments: the round trip over odd head lengths (past 16-word groups, padded
/// rows), the bit position of every lane against the layout rule, and the two errors.
#[test]
fn ternary2_fragments_round_trip_and_layout() {
    let mut rng = Rng::new(77);
    for (heads, d, n) in [(1, 1, 1), (3, 33, 5), (2, 64, 8), (4, 70, 3), (1, 257, 2)] {
        let codes = rng.ternary(heads * d * n);
        let words = pack_lowrank_weight_codes_i8x4(&codes, heads, d, n).unwrap();
        let kw = d.div_ceil(4);
        let t2 = pack_ternary2_fragments(&words, heads, kw, n).unwrap();
        assert_eq!(t2.len(), heads * ternary2_rows(kw) * n);
        assert_eq!(unpack_ternary2_fragments(&t2, heads, kw, n).unwrap(), words);
        for h in 0..heads {
            for r2 in 0..ternary2_rows(kw) {
                for c in 0..n {
                    let v = t2[(h * ternary2_rows(kw) + r2) * n + c];
                    for j in 0..4 {
                        let w = 16 * (r2 / 4) + r2 % 4 + 4 * j;
                        for b in 0..4 {
                            let k = 4 * w + b;
                            let want = if k < d { codes[(h * d + k) * n + c] } else { 0 };
                            let field = (v >> (8 * b + 2 * j)) & 3;
                            assert_eq!(field as i8 - 1, want, "h{h} r{r2} c{c} j{j} b{b}");
                        }
                    }
                }
            }
        }
    }
    // An int8 lane, a short buffer, and the invalid field 0b11 are errors.
    assert!(pack_ternary2_fragments(&[0x0000_0002], 1, 1, 1).is_err());
    assert!(pack_ternary2_fragments(&[0; 3], 1, 2, 2).is_err());
    assert!(unpack_ternary2_fragments(&[0x5555_5557; 4], 1, 1, 1).is_err());
}
