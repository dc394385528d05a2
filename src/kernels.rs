//! The kernel registry: every GPU kernel is named by one [`KernelId`]; its source file stem and
//! entry-point name are written here once and nowhere else.

/// Every kernel of the crate, on either GPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelId {
    /// Absmean reduction → scale buffer.
    AbsmeanScale,
    /// f32 → i32 codes.
    QuantizeCodes,
    /// f32 → i8x4 words.
    QuantizePack,
    /// Low-rank projection, prepacked i8x4 input.
    LowrankPacked,
    /// Low-rank projection, i32 codes input.
    LowrankCodes,
    /// Low-rank projection, f32 input quantized in the kernel.
    LowrankF32,
    /// Low-rank projection, float path (no activation quantization).
    LowrankFloat,
    /// Decoder tail, prepacked input.
    DecoderPacked,
    /// Decoder tail, i32 codes input.
    DecoderCodes,
    /// Decoder tail, f32 input quantized in the kernel.
    DecoderF32,
    /// Decoder tail, float path (no activation quantization).
    DecoderFloat,
    /// Decoder tail split-K partial-sum reduction.
    DecoderReduce,
    /// Rho int8 block pack: per block of 32, scale `max|v|/127` and 8 i8x4 code words.
    RhoInt8Pack,
    /// Rho int8 block unpack: `code · scale` per element.
    RhoInt8Unpack,
    /// CUDA microbenchmark: independent `__dp4a` chains (the dp4a ceiling).
    Dp4aCeiling,
    /// CUDA microbenchmark: 16-byte device-to-device copy (copy bandwidth).
    CopyBandwidth,
    /// CUDA microbenchmark: each block streams its share of one buffer once, launched like the
    /// small-M kernels (the weight-stream floor of a chain of dependent ops).
    StreamRead,
    /// CUDA int8 tensor cores (sm_80+): low-rank projection on i8x4 words.
    LowrankMma,
    /// CUDA int8 tensor cores: decoder tail (i8x4 rows), its split-K reduction, and the
    /// packing of codes / f32 / misaligned inputs (either op) into aligned i8x4 rows.
    DecoderMma,
    /// CUDA int8 tensor cores: sums `DecoderMma`'s split-K i32 partials in split order.
    DecoderMmaReduce,
    /// CUDA int8 tensor cores: packs either op's input (codes, f32 quantized with a known
    /// scale, or misaligned i8x4 words) into zero-padded rows of a multiple of 4 words.
    MmaPrepA,
    /// CUDA int8 tensor cores: `MmaPrepA` for f32 input with the absmean scale computed in
    /// the same (cooperative) launch.
    MmaPrepScaleA,
    /// CUDA int8 tensor cores, M ≤ 16 (or ternary2 fragment weights at any M): one m16 row
    /// fragment, the weights streamed once into registers.
    LowrankMmaSmall,
    /// CUDA int8 tensor cores: the decoder tail's counterpart of `LowrankMmaSmall`, split by
    /// head and K slice.
    DecoderMmaSmall,
    /// CUDA warpgroup mma (sm_90a only): low-rank projection, the weight tile resident.
    LowrankWgmma,
    /// CUDA warpgroup mma (sm_90a only): decoder tail, the weights as register A fragments.
    DecoderWgmma,
}

impl KernelId {
    /// CUDA-only microbenchmark kernels (not part of [`KernelId::ALL`], which lists the op
    /// kernels every GPU backend implements).
    pub const MICROBENCH: [Self; 3] = [Self::Dp4aCeiling, Self::CopyBandwidth, Self::StreamRead];

    /// The CUDA int8 tensor-core (mma) family (not part of [`KernelId::ALL`] either).
    pub const CUDA_MMA: [Self; 9] = [
        Self::LowrankMma,
        Self::DecoderMma,
        Self::DecoderMmaReduce,
        Self::MmaPrepA,
        Self::MmaPrepScaleA,
        Self::LowrankMmaSmall,
        Self::DecoderMmaSmall,
        Self::LowrankWgmma,
        Self::DecoderWgmma,
    ];

    /// The op kernels every GPU backend implements (CUDA dp4a and WGSL).
    pub const ALL: [Self; 14] = [
        Self::AbsmeanScale,
        Self::QuantizeCodes,
        Self::QuantizePack,
        Self::LowrankPacked,
        Self::LowrankCodes,
        Self::LowrankF32,
        Self::LowrankFloat,
        Self::DecoderPacked,
        Self::DecoderCodes,
        Self::DecoderF32,
        Self::DecoderFloat,
        Self::DecoderReduce,
        Self::RhoInt8Pack,
        Self::RhoInt8Unpack,
    ];

    /// Source stem: `cuda/{stem}.cu`, `shaders/{stem}.wgsl`.
    pub fn stem(self) -> &'static str {
        match self {
            Self::AbsmeanScale | Self::QuantizeCodes | Self::QuantizePack => "quantize",
            Self::LowrankPacked | Self::LowrankCodes | Self::LowrankF32 | Self::LowrankFloat => {
                "lowrank"
            }
            Self::DecoderPacked
            | Self::DecoderCodes
            | Self::DecoderF32
            | Self::DecoderFloat
            | Self::DecoderReduce => "decoder_tail",
            Self::RhoInt8Pack | Self::RhoInt8Unpack => "rho",
            Self::Dp4aCeiling | Self::CopyBandwidth | Self::StreamRead => "microbench",
            Self::LowrankMma | Self::LowrankMmaSmall | Self::LowrankWgmma => "lowrank_mma",
            Self::DecoderMma
            | Self::DecoderMmaReduce
            | Self::MmaPrepA
            | Self::MmaPrepScaleA
            | Self::DecoderMmaSmall
            | Self::DecoderWgmma => "decoder_tail_mma",
        }
    }

    /// Entry point name (CUDA `extern "C" __global__` / WGSL `@compute fn`).
    pub fn entry(self) -> &'static str {
        match self {
            Self::AbsmeanScale => "absmean_scale",
            Self::QuantizeCodes => "quantize_codes",
            Self::QuantizePack => "quantize_pack_i8x4",
            Self::LowrankPacked => "lowrank_packed",
            Self::LowrankCodes => "lowrank_codes",
            Self::LowrankF32 => "lowrank_f32",
            Self::LowrankFloat => "lowrank_float",
            Self::DecoderPacked => "decoder_packed",
            Self::DecoderCodes => "decoder_codes",
            Self::DecoderF32 => "decoder_f32",
            Self::DecoderFloat => "decoder_float",
            Self::DecoderReduce => "decoder_reduce",
            Self::RhoInt8Pack => "rho_int8_pack",
            Self::RhoInt8Unpack => "rho_int8_unpack",
            Self::Dp4aCeiling => "dp4a_ceiling",
            Self::CopyBandwidth => "copy_bandwidth",
            Self::StreamRead => "stream_read",
            Self::LowrankMma => "lowrank_mma",
            Self::DecoderMma => "decoder_tail_mma",
            Self::DecoderMmaReduce => "decoder_mma_reduce",
            Self::MmaPrepA => "mma_prep_a",
            Self::MmaPrepScaleA => "mma_prep_scale_a",
            Self::LowrankMmaSmall => "lowrank_mma_small",
            Self::DecoderMmaSmall => "decoder_mma_small",
            Self::LowrankWgmma => "lowrank_wgmma",
            Self::DecoderWgmma => "decoder_wgmma",
        }
    }
}
