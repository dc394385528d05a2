//! Tuning constants of the CUDA kernels, written once here and handed to NVRTC as `-D` defines.

/// Threads per block of every projection kernel.
pub const THREADS: u32 = 256;
/// Blocks per SM the tiled kernels are compiled for (`__launch_bounds__` min blocks).
pub const MIN_BLOCKS: u32 = 2;

/// Tiled path: outputs per block (rows x columns), K words per smem stage, rows per thread.
pub const TILE_BM: u32 = 128;
/// Tiled path: output columns per block (default).
pub const TILE_BN: u32 = 128;
/// Tiled path: K words (4 k each) per smem stage.
pub const TILE_BK: u32 = 16;
/// Tiled path: output rows per thread (default).
pub const TILE_TM: u32 = 8;
/// Static shared memory a tiled block may use (two stages of A and B words).
pub const TILE_SMEM_MAX: u32 = 48 * 1024;

/// Environment variables that override the tiled dp4a shape per op (`BMxBNxTM` or
/// `BMxBNxTM/MIN_BLOCKS`, e.g. `128x64x4/3`): for tuning sweeps on a new card.
pub const TILE_ENV_LOWRANK: &str = "LOWBIT_CUDA_TILE_LOWRANK";
/// The decoder tail's tile override (see [`TILE_ENV_LOWRANK`]).
pub const TILE_ENV_DECODER: &str = "LOWBIT_CUDA_TILE_DECODER";

/// Block shape of the tiled dp4a path: `bm x bn` outputs, `tm` rows x 8 columns per thread,
/// compiled for `min_blocks` resident blocks per SM. K advances [`TILE_BK`] words per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DpTile {
    /// Output rows per block (a multiple of `tm`).
    pub bm: u32,
    /// Output columns per block (a multiple of 8).
    pub bn: u32,
    /// Output rows per thread: 4 or 8.
    pub tm: u32,
    /// Resident blocks per SM the kernel is compiled for (`__launch_bounds__`): 1 to 4.
    pub min_blocks: u32,
}

impl DpTile {
    /// What the kernels use unless an environment variable says otherwise.
    pub const DEFAULT: Self = Self {
        bm: TILE_BM,
        bn: TILE_BN,
        tm: TILE_TM,
        min_blocks: MIN_BLOCKS,
    };

    /// Shapes the NVRTC test compiles besides the default (the H100 sweep of
    /// `benches/gpu/sweep.sh tiles` found none faster than the default there; 64x128x4/3 is
    /// not one: three blocks per SM cap it at 80 registers and it spills).
    pub const CANDIDATES: [Self; 2] = [
        Self::DEFAULT,
        Self {
            bm: 128,
            bn: 64,
            tm: 4,
            min_blocks: 2,
        },
    ];

    /// Parses `BMxBNxTM` or `BMxBNxTM/MIN_BLOCKS` and checks it fits the kernel.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (dims, blocks) = match text.trim().split_once('/') {
            Some((d, b)) => (d, Some(b)),
            None => (text.trim(), None),
        };
        let nums = parse_dims(dims)?;
        let [bm, bn, tm] = nums[..] else {
            return Err(format!("`{text}` is not BMxBNxTM[/MIN_BLOCKS]"));
        };
        let min_blocks = match blocks {
            Some(b) => b
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("`{b}` is not a number"))?,
            None => MIN_BLOCKS,
        };
        let tile = Self {
            bm,
            bn,
            tm,
            min_blocks,
        };
        tile.check()?;
        Ok(tile)
    }

    /// The constraints of `lb_tiled` in `cuda/common.cuh`.
    pub fn check(&self) -> Result<(), String> {
        let Self {
            bm,
            bn,
            tm,
            min_blocks,
        } = *self;
        let bad = |why: &str| Err(format!("tile {bm}x{bn}x{tm}/{min_blocks}: {why}"));
        if tm != 4 && tm != 8 {
            return bad("rows per thread must be 4 or 8");
        }
        if bm == 0 || bn == 0 || !bm.is_multiple_of(tm) || !bn.is_multiple_of(8) {
            return bad("BM must be a multiple of TM and BN of 8");
        }
        if (bn / 8) * (bm / tm) != THREADS {
            return bad(&format!("(BN/8)*(BM/TM) must be {THREADS} threads"));
        }
        if !(bm * TILE_BK / 4).is_multiple_of(THREADS)
            || !(TILE_BK * bn / 4).is_multiple_of(THREADS)
        {
            return bad("each thread must stage whole 16-byte chunks of A and B");
        }
        if 2 * TILE_BK * (bm + bn) * 4 > TILE_SMEM_MAX {
            return bad("two stages exceed 48 KiB of static shared memory");
        }
        if !(1..=4).contains(&min_blocks) {
            return bad("MIN_BLOCKS must be 1 to 4");
        }
        Ok(())
    }

    /// The tile for `var` (unset or empty: [`DpTile::DEFAULT`]).
    pub fn from_env(var: &str) -> Result<Self, String> {
        from_env(var, Self::DEFAULT, Self::parse)
    }
}

/// The numbers of `AxBx...` (each trimmed).
pub(crate) fn parse_dims(text: &str) -> Result<Vec<u32>, String> {
    text.trim()
        .split('x')
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{v}` is not a number"))
        })
        .collect()
}

/// A tuning setting from environment variable `var`: `parse` of its value, or `default` when
/// it is unset or empty; a parse error names the variable.
pub(crate) fn from_env<T>(
    var: &str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse(&v).map_err(|e| format!("{var}: {e}")),
        _ => Ok(default),
    }
}

/// M = B·T at or below this takes the small-M path (weights streamed once).
pub const SMALL_M_MAX: usize = 16;
/// The dp4a small-M low-rank kernel on packed words runs up to this many rows on the one-row
/// shape (`SmallShape::m1_blocks` blocks per SM; 64 registers at 4). H200, BDH shape: M = 2
/// 4.25 µs against 4.35 at 2 blocks per SM; M = 3 5.10 against 4.89, so 3 and 4 rows keep 2.
pub const SMALL_M1_ROWS: usize = 2;
/// Small-M path: K words of A staged in smem per chunk.
pub const SMALL_KC: u32 = 256;
/// ... and for 9 to 16 rows (fewer staging registers beside 16 rows of accumulators).
pub const SMALL_KC_16: u32 = 128;
/// Small-M path, warps along the output columns (the rest split K): low-rank (wide N, short
/// K) and decoder (narrow D, long K).
pub const SMALL_CW_LOWRANK: u32 = 2;
/// Small-M dp4a decoder kernel: column warps per block (32 columns each; the rest split K).
pub const SMALL_CW_DECODER: u32 = 2;

/// Environment variable overriding [`SmallShape`] (`CWxB[xM1]`, e.g. `8x1`): for tuning
/// sweeps.
pub const SMALL_ENV: &str = "LOWBIT_CUDA_SMALL";

/// Grid shape of the small-M kernels: the dp4a low-rank kernel on one or two rows of packed
/// words ([`SMALL_M1_ROWS`]) runs `lowrank_cw` column warps per block (of its 8 warps; the
/// rest split K), compiled for `m1_blocks` resident blocks per SM (2 or 4: more blocks, fewer
/// registers); every other dp4a low-rank kernel runs 2 blocks per SM on
/// `lowrank_cw · m1_blocks / 2` column warps (the same grid per wave). `blocks_per_sm`: what
/// the decoder's split-K count aims at (both families; half as many, at least 1, for ternary2
/// weights).
/// The default measured fastest on the H200 at the BDH shape (BENCHMARKS.md): low-rank M = 1
/// 4.00 µs at `2x2x4` against 4.16 at `4x2x2`; decoder `x2` 7.1 µs at M = 16 against 10.2 at
/// `x4`; ternary2 decoder at 1 block per SM 3.70 / 6.12 µs (M = 1 / 16) against 4.18 / 6.69.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SmallShape {
    /// Column warps per block of the one-/two-row dp4a low-rank kernel: 1, 2, 4 or 8
    /// (default 2).
    pub lowrank_cw: u32,
    /// Blocks per SM the small-M decoders' split-K count aims at (half, at least 1, with
    /// ternary2 weights; blocks of 256 threads for the tensor-core decoder, whose CTA may be
    /// larger): 1 to 8 (default 2).
    pub blocks_per_sm: u32,
    /// Resident blocks per SM of the one-/two-row dp4a low-rank kernel: 2 or 4 (default 4).
    pub m1_blocks: u32,
}

impl SmallShape {
    /// `2x2x4`: what the kernels use unless [`SMALL_ENV`] says otherwise.
    pub const DEFAULT: Self = Self {
        lowrank_cw: SMALL_CW_LOWRANK,
        blocks_per_sm: SPLIT_BLOCKS_PER_SM,
        m1_blocks: 4,
    };

    /// `CWxB` or `CWxBxM1`: CW in 1, 2, 4, 8; B in 1..=8; M1 2 or 4 (default 4).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (cw, b, m1) = match parse_dims(text)?[..] {
            [cw, b] => (cw, b, Self::DEFAULT.m1_blocks),
            [cw, b, m1] => (cw, b, m1),
            _ => (0, 0, 0),
        };
        if matches!(cw, 1 | 2 | 4 | 8) && (1..=8).contains(&b) && matches!(m1, 2 | 4) {
            Ok(Self {
                lowrank_cw: cw,
                blocks_per_sm: b,
                m1_blocks: m1,
            })
        } else {
            Err(format!(
                "`{text}`: expected CWxB[xM1] with CW in 1, 2, 4, 8, B in 1..=8 and M1 2 or 4"
            ))
        }
    }

    /// The shape for [`SMALL_ENV`] (unset or empty: [`SmallShape::DEFAULT`]).
    pub fn from_env() -> Result<Self, String> {
        from_env(SMALL_ENV, Self::DEFAULT, Self::parse)
    }
}

/// Float path tile (fixed in the source: 64x64 outputs, 16x16 threads).
pub const FLOAT_TILE: u32 = 64;

/// Small-M decoder split-K: blocks per SM the split count aims at (`SmallShape`).
pub const SPLIT_BLOCKS_PER_SM: u32 = 2;
/// Decoder split-K: never more than this many splits per head.
pub const MAX_SPLITS_PER_HEAD: u32 = 64;

/// Absmean reduction: threads per block and the most blocks (the grid depends only on the
/// length, the order within a thread on the length and the input's 16-byte alignment, so a
/// given buffer's bits are fixed).
pub const RED_THREADS: u32 = 256;
/// Absmean reduction: the most blocks (one partial sum each).
pub const RED_MAX_BLOCKS: u32 = 1024;
/// Elements per thread the reduction grid is sized for (two float4 loads: more blocks, each
/// thread's loads in flight at once).
pub const RED_ITEMS: u32 = 8;
/// The absmean reduction's blocks for `n` floats.
pub const fn red_blocks(n: usize) -> u32 {
    let b = n.div_ceil((RED_THREADS * RED_ITEMS) as usize);
    if b < 1 {
        1
    } else if b > RED_MAX_BLOCKS as usize {
        RED_MAX_BLOCKS
    } else {
        b as u32
    }
}
/// The most reduction blocks whose sum a small-M low-rank CTA works out itself
/// (`CudaDevice::with_small_inline_scale`): 8, x of at most 16384 floats (64 KB) read by
/// every CTA.
pub const SMALL_INLINE_SCALE_MAX_BLOCKS: u32 = 8;

/// Elementwise kernels (quantize, rho): threads per block and the grid cap.
pub const EW_THREADS: u32 = 256;
/// Elementwise kernels: the most blocks per launch.
pub const EW_MAX_BLOCKS: u32 = 65_535;

/// dp4a ceiling microbenchmark: independent chains per thread.
pub const CEILING_CHAINS: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_blocks_follow_the_length() {
        let per_block = (RED_THREADS * RED_ITEMS) as usize;
        assert_eq!(red_blocks(1), 1);
        assert_eq!(red_blocks(per_block), 1);
        assert_eq!(red_blocks(per_block + 1), 2);
        assert_eq!(red_blocks(16384), SMALL_INLINE_SCALE_MAX_BLOCKS);
        assert_eq!(red_blocks(usize::MAX / 2), RED_MAX_BLOCKS);
    }

    #[test]
    fn tile_candidates_fit_the_kernel() {
        for t in DpTile::CANDIDATES {
            t.check().unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(DpTile::parse("128x128x8").unwrap(), DpTile::DEFAULT);
        assert_eq!(SmallShape::parse(" 2 x 2 "), Ok(SmallShape::DEFAULT));
        assert_eq!(
            SmallShape::parse("2x4x4"),
            Ok(SmallShape {
                lowrank_cw: 2,
                blocks_per_sm: 4,
                m1_blocks: 4
            })
        );
        for bad in [
            "", "4", "3x2", "4x0", "4x9", "4x2x1", "4x2x3", "4x2x4x1", "ax2",
        ] {
            assert!(SmallShape::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DpTile::parse("128x64x4/3").unwrap(),
            DpTile {
                bm: 128,
                bn: 64,
                tm: 4,
                min_blocks: 3
            }
        );
        for bad in [
            "",
            "128x128",
            "128x128x6",
            "128x128x8/9",
            "64x64x8",
            "axbxc",
            "256x256x8",
        ] {
            assert!(DpTile::parse(bad).is_err(), "{bad}");
        }
    }
}
