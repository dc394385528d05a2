//! Tuning constants of the CUDA kernels, written once here and handed to NVRTC as `-D` defines.

/// Threads per block of every projection kernel.
pub const THREADS: u32 = 256;
/// Blocks per SM the tiled kernels are compiled for (`__launch_bounds__` min blocks).
pub const MIN_BLOCKS: u32 = 2;

/// Tiled path: outputs per block (rows x columns), K words per smem stage, rows per thread.
pub const TILE_BM: u32 = 128;
pub const TILE_BN: u32 = 128;
pub const TILE_BK: u32 = 16;
pub const TILE_TM: u32 = 8;

/// M = B·T at or below this takes the small-M path (weights streamed once).
pub const SMALL_M_MAX: usize = 16;
/// Small-M path: K words of A staged in smem per chunk.
pub const SMALL_KC: u32 = 256;
/// Small-M path, warps along the output columns (the rest split K): low-rank (wide N, short
/// K) and decoder (narrow D, long K).
pub const SMALL_CW_LOWRANK: u32 = 4;
pub const SMALL_CW_DECODER: u32 = 2;

/// Float path tile (fixed in the source: 64x64 outputs, 16x16 threads).
pub const FLOAT_TILE: u32 = 64;

/// Decoder split-K: aim for this many resident blocks per SM when choosing the split count.
pub const SPLIT_BLOCKS_PER_SM: u32 = 2;
/// Decoder split-K: never more than this many splits per head.
pub const MAX_SPLITS_PER_HEAD: u32 = 64;

/// Absmean reduction: threads per block and the most blocks (the grid depends only on the
/// length, so the summation order — and the bits — are fixed).
pub const RED_THREADS: u32 = 256;
pub const RED_MAX_BLOCKS: u32 = 1024;
/// Elements per thread the reduction grid is sized for.
pub const RED_ITEMS: u32 = 16;

/// Elementwise kernels (quantize, rho): threads per block and the grid cap.
pub const EW_THREADS: u32 = 256;
pub const EW_MAX_BLOCKS: u32 = 65_535;

/// dp4a ceiling microbenchmark: independent chains per thread.
pub const CEILING_CHAINS: u32 = 16;
