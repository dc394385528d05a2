//! The WGSL sources (embedded at compile time; `build.rs` validated them) and the bind group
//! layout of every kernel.

use crate::kernels::KernelId;

/// How a binding slot is declared in the shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// Source of `shaders/{stem}.wgsl`.
pub(crate) fn source(stem: &str) -> Option<&'static str> {
    Some(match stem {
        "quantize" => include_str!("../../../shaders/quantize.wgsl"),
        "lowrank" => include_str!("../../../shaders/lowrank.wgsl"),
        "decoder_tail" => include_str!("../../../shaders/decoder_tail.wgsl"),
        "rho" => include_str!("../../../shaders/rho.wgsl"),
        _ => return None,
    })
}

/// Bindings of group 0 for `kernel` (binding 0 is always the params uniform).
pub(crate) fn bindings(kernel: KernelId) -> &'static [(u32, Bind)] {
    use Bind::*;
    use KernelId::*;
    match kernel {
        AbsmeanScale => &[(0, Uniform), (1, Read), (2, ReadWrite), (3, ReadWrite)],
        QuantizeCodes | QuantizePack => &[(0, Uniform), (1, Read), (3, ReadWrite), (4, ReadWrite)],
        LowrankPacked | LowrankCodes | LowrankF32 | LowrankFloat => &[
            (0, Uniform),
            (1, Read),
            (2, Read),
            (3, Read),
            (4, ReadWrite),
        ],
        DecoderPacked | DecoderCodes | DecoderF32 | DecoderFloat | DecoderReduce => &[
            (0, Uniform),
            (1, Read),
            (2, Read),
            (3, Read),
            (4, ReadWrite),
            (5, Read),
        ],
        RhoInt8Pack => &[(0, Uniform), (1, Read), (2, ReadWrite), (3, ReadWrite)],
        RhoInt8Unpack => &[(0, Uniform), (4, Read), (5, Read), (6, ReadWrite)],
        #[allow(unreachable_patterns)]
        _ => &[],
    }
}
