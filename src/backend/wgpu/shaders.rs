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

/// Every file in `shaders/`: the op modules and the files they include.
const FILES: [(&str, &str); 6] = [
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    (
        "gemm_i8x4.wgsl",
        include_str!("../../../shaders/gemm_i8x4.wgsl"),
    ),
    (
        "quantize.wgsl",
        include_str!("../../../shaders/quantize.wgsl"),
    ),
    (
        "lowrank.wgsl",
        include_str!("../../../shaders/lowrank.wgsl"),
    ),
    (
        "decoder_tail.wgsl",
        include_str!("../../../shaders/decoder_tail.wgsl"),
    ),
    ("rho.wgsl", include_str!("../../../shaders/rho.wgsl")),
];

fn file(name: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, text)| text)
}

/// The module of `shaders/{stem}.wgsl`, its `// #include` lines expanded; `Err` names what
/// is missing or malformed.
pub(crate) fn source(stem: &str) -> Result<String, String> {
    let name = format!("{stem}.wgsl");
    let src = file(&name).ok_or_else(|| format!("no WGSL source `shaders/{name}`"))?;
    Ok(super::wgsl_include::expand(&name, src, file)?.text)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `shaders/` is embedded as it is on disk, and every op stem's module
    /// expands (build.rs validated the same expansion).
    #[test]
    fn every_shader_file_is_embedded_and_every_stem_expands() {
        // (the source tree is not there when the test binary runs on another machine)
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
        let entries: Vec<_> = std::fs::read_dir(dir).map_or(Vec::new(), |d| d.collect());
        let mut on_disk = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "wgsl") {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                assert_eq!(file(&name), Some(text.as_str()), "{name} is not embedded");
                on_disk += 1;
            }
        }
        assert!(
            on_disk == FILES.len() || on_disk == 0,
            "FILES lists a file shaders/ lacks"
        );
        for id in KernelId::ALL {
            let module = source(id.stem()).unwrap();
            assert!(module.contains(&format!("fn {}(", id.entry())), "{id:?}");
            let directive = |l: &str| super::super::wgsl_include::included(l) != Ok(None);
            assert!(!module.lines().any(directive), "{id:?}: a directive left");
        }
        assert!(source("nope").is_err());
    }
}
