//! Run-time compilation of `cuda/*.cu` through NVRTC.
//!
//! Every source is `cuda/common.cuh` followed by the op's file (one stem per op), compiled
//! for the device's architecture (`sm_XY` to a cubin; `compute_XY` PTX if this NVRTC does not
//! know the device) with the tuning constants as `-D` defines. No fast-math: IEEE division,
//! no flush-to-zero. Failures return the compiler's full log.

use std::ffi::{CStr, CString, c_char, c_int};

use cudarc::nvrtc::sys;

use crate::error::{BackendKind, LowbitError, Result};

const COMMON: &str = include_str!("../../../cuda/common.cuh");

/// The source of stem `stem` (`cuda/{stem}.cu`), without the common prelude.
pub fn source(stem: &str) -> Option<&'static str> {
    Some(match stem {
        "quantize" => include_str!("../../../cuda/quantize.cu"),
        "lowrank" => include_str!("../../../cuda/lowrank.cu"),
        "decoder_tail" => include_str!("../../../cuda/decoder_tail.cu"),
        "rho" => include_str!("../../../cuda/rho.cu"),
        "microbench" => include_str!("../../../cuda/microbench.cu"),
        // The tensor-core family: its shared core, then the op.
        "lowrank_mma" => concat!(
            "#line 1 \"mma.cuh\"\n",
            include_str!("../../../cuda/mma.cuh"),
            "\n#line 1 \"lowrank_mma.cu\"\n",
            include_str!("../../../cuda/lowrank_mma.cu")
        ),
        "decoder_tail_mma" => concat!(
            "#line 1 \"mma.cuh\"\n",
            include_str!("../../../cuda/mma.cuh"),
            "\n#line 1 \"decoder_tail_mma.cu\"\n",
            include_str!("../../../cuda/decoder_tail_mma.cu")
        ),
        _ => return None,
    })
}

/// Every stem with a CUDA source.
pub const STEMS: [&str; 7] = [
    "quantize",
    "lowrank",
    "decoder_tail",
    "rho",
    "microbench",
    "lowrank_mma",
    "decoder_tail_mma",
];

/// True when libnvrtc can be loaded (never panics).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library candidates.
    unsafe { sys::is_culib_present() }
}

fn nvrtc_error(call: &str, r: sys::nvrtcResult) -> LowbitError {
    // SAFETY: nvrtcGetErrorString returns a static C string.
    let msg = unsafe {
        let p = sys::nvrtcGetErrorString(r);
        if p.is_null() {
            format!("{r:?}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    LowbitError::Driver {
        backend: BackendKind::Cuda,
        context: format!("NVRTC {call}"),
        message: msg,
    }
}

fn check(call: &str, r: sys::nvrtcResult) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(nvrtc_error(call, r))
    }
}

fn unavailable() -> LowbitError {
    LowbitError::BackendUnavailable {
        backend: BackendKind::Cuda,
        reason: "libnvrtc not found (NVRTC compiles the CUDA kernels at run time)".into(),
    }
}

/// NVRTC's `(major, minor)` version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(unavailable());
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: plain out-parameters.
    check("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major, minor))
}

/// The real architectures (`XY` of `sm_XY`) this NVRTC can compile for.
pub fn supported_archs() -> Result<Vec<u32>> {
    if !nvrtc_present() {
        return Err(unavailable());
    }
    let mut n: c_int = 0;
    // SAFETY: out-parameter, then a buffer of the size NVRTC reported.
    unsafe {
        check(
            "nvrtcGetNumSupportedArchs",
            sys::nvrtcGetNumSupportedArchs(&mut n),
        )?;
        let mut v = vec![0 as c_int; n.max(0) as usize];
        check(
            "nvrtcGetSupportedArchs",
            sys::nvrtcGetSupportedArchs(v.as_mut_ptr()),
        )?;
        Ok(v.into_iter().map(|a| a as u32).collect())
    }
}

/// What NVRTC produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// A cubin (`sm_XY`) or NUL-terminated PTX (`compute_XY`).
    pub image: Vec<u8>,
    /// Whether `image` is a cubin (else PTX, which the driver JIT-compiles at load).
    pub is_cubin: bool,
    /// The `--gpu-architecture` used.
    pub target: String,
    /// NVRTC's log (with ptxas' resource report: registers, spills, smem).
    pub log: String,
}

/// The target for a device of compute capability `cc`: the device's own `sm_XY` when NVRTC
/// knows it, else PTX for the newest architecture NVRTC knows below it.
pub fn target_for(cc: (u32, u32)) -> Result<(String, bool)> {
    let want = cc.0 * 10 + cc.1;
    let archs = supported_archs()?;
    if archs.contains(&want) {
        return Ok((format!("sm_{want}"), true));
    }
    match archs.into_iter().filter(|&a| a <= want).max() {
        Some(a) => Ok((format!("compute_{a}"), false)),
        None => Err(LowbitError::Unsupported {
            backend: BackendKind::Cuda,
            op: "compile",
            reason: format!("NVRTC supports no architecture at or below sm_{want}"),
        }),
    }
}

/// A module compiled with this define uses sm_90a-only instructions (`wgmma`): its target is
/// `sm_90a`, a cubin that runs on compute capability 9.0 only.
pub const ARCH_SPECIFIC_DEFINE: &str = "LB_WGMMA";

/// The `sm_90a` target, when the device is compute capability 9.0 and this NVRTC knows sm_90.
pub fn sm90a_target(cc: (u32, u32)) -> Result<(String, bool)> {
    if cc == (9, 0) && supported_archs()?.contains(&90) {
        Ok(("sm_90a".to_string(), true))
    } else {
        Err(LowbitError::Unsupported {
            backend: BackendKind::Cuda,
            op: "compile",
            reason: format!(
                "wgmma kernels need compute capability 9.0 (sm_90a) and an NVRTC that knows it; \
                 the device is {}.{}",
                cc.0, cc.1
            ),
        })
    }
}

/// Compiles `cuda/{stem}.cu` (after `common.cuh`) for `cc` with `defines` (`NAME=VALUE`).
pub fn compile(stem: &str, cc: (u32, u32), defines: &[(String, String)]) -> Result<Compiled> {
    let body = source(stem).ok_or_else(|| LowbitError::InvalidArgument {
        op: "cuda::compile",
        what: "stem",
        reason: format!("no CUDA source for stem `{stem}`"),
    })?;
    let (target, is_cubin) = if defines.iter().any(|(k, _)| k == ARCH_SPECIFIC_DEFINE) {
        sm90a_target(cc)?
    } else {
        target_for(cc)?
    };
    let src = format!("{COMMON}\n#line 1 \"{stem}.cu\"\n{body}");
    let kernel = describe(stem, defines);
    let to_c = |s: String| {
        CString::new(s).map_err(|_| LowbitError::InvalidArgument {
            op: "cuda::compile",
            what: "source or option",
            reason: "contains a NUL byte".into(),
        })
    };
    let c_src = to_c(src)?;
    let c_name = to_c(format!("{stem}.cu"))?;
    let mut opts = vec![
        format!("--gpu-architecture={target}"),
        "--std=c++17".to_string(),
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ptxas-options=-v".to_string(),
    ];
    for (k, v) in defines {
        opts.push(format!("-D{k}={v}"));
    }
    let c_opts = opts.into_iter().map(to_c).collect::<Result<Vec<_>>>()?;
    let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer outlives the calls; the program is destroyed on every path.
    unsafe {
        check(
            "nvrtcCreateProgram",
            sys::nvrtcCreateProgram(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
        )?;
        let result = (|| {
            let r = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let log = program_log(prog)?;
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(LowbitError::Compile {
                    backend: BackendKind::Cuda,
                    kernel: kernel.clone(),
                    log: if log.trim().is_empty() {
                        nvrtc_error("nvrtcCompileProgram", r).to_string()
                    } else {
                        log
                    },
                });
            }
            let mut size = 0usize;
            let image = if is_cubin {
                check("nvrtcGetCUBINSize", sys::nvrtcGetCUBINSize(prog, &mut size))?;
                let mut buf = vec![0u8; size];
                check(
                    "nvrtcGetCUBIN",
                    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char),
                )?;
                buf
            } else {
                check("nvrtcGetPTXSize", sys::nvrtcGetPTXSize(prog, &mut size))?;
                let mut buf = vec![0u8; size];
                check(
                    "nvrtcGetPTX",
                    sys::nvrtcGetPTX(prog, buf.as_mut_ptr() as *mut c_char),
                )?;
                buf
            };
            Ok(Compiled {
                image,
                is_cubin,
                target: target.clone(),
                log,
            })
        })();
        let _ = sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// `stem.cu [A=1 B=2]`, for errors and reports.
pub fn describe(stem: &str, defines: &[(String, String)]) -> String {
    let d: Vec<String> = defines.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{stem}.cu [{}]", d.join(" "))
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn program_log(prog: sys::nvrtcProgram) -> Result<String> {
    let mut size = 0usize;
    // SAFETY: the caller guarantees `prog`; the buffer has the reported size.
    unsafe {
        check(
            "nvrtcGetProgramLogSize",
            sys::nvrtcGetProgramLogSize(prog, &mut size),
        )?;
        let mut buf = vec![0u8; size.max(1)];
        check(
            "nvrtcGetProgramLog",
            sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char),
        )?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

/// The compile-everything tests' loop body: compiles one variant unless
/// `LOWBIT_NVRTC_VARIANT=TEXT` is set and its description lacks TEXT (then `None`); keeps the
/// image under `LOWBIT_DUMP_CUBIN=DIR` (for nvdisasm); fails on more spill stores than
/// `spill_budget` bytes (`None`: any) and on wgmma serialized by ptxas; prints ptxas'
/// resource lines under `LOWBIT_PTXAS_REPORT=1`; with `LOWBIT_NVDISASM=PATH` (an nvdisasm),
/// checks each sm_90 image's load order around the PDL wait ([`check_pdl_load_order`]).
#[cfg(test)]
pub(crate) fn compile_checked(
    stem: &str,
    cc: (u32, u32),
    defines: &[(String, String)],
    spill_budget: Option<usize>,
) -> Option<Compiled> {
    let name = describe(stem, defines);
    if let Ok(only) = std::env::var("LOWBIT_NVRTC_VARIANT")
        && !name.contains(&only)
    {
        return None;
    }
    let c = compile(stem, cc, defines).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.image.is_empty(), "{name}: empty image");
    if let Ok(dir) = std::env::var("LOWBIT_DUMP_CUBIN") {
        let file: String = name
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        std::fs::write(format!("{dir}/sm{}{}_{file}.cubin", cc.0, cc.1), &c.image).unwrap();
    }
    let spilled = spill_store_bytes(&c.log);
    assert!(
        spill_budget.is_none_or(|budget| spilled <= budget),
        "{name}: {spilled} bytes of spill stores\n{}",
        c.log
    );
    // ptxas falls back to waiting for every wgmma when it cannot prove the accumulators of
    // one in flight untouched (C7514, C7518, ...): silently slow.
    assert!(
        !c.log.contains("are serialized"),
        "{name}: wgmma serialized\n{}",
        c.log
    );
    if cc.0 >= 9 {
        check_pdl_load_order(&name, &c.image);
    }
    if std::env::var("LOWBIT_PTXAS_REPORT").is_ok() {
        println!("== sm_{}{} {name}", cc.0, cc.1);
        for line in c.log.lines().filter(|l| {
            l.contains("registers")
                || l.contains("spill")
                || l.contains("Compiling")
                || l.contains("serialized")
        }) {
            println!("   {line}");
        }
    }
    Some(c)
}

/// Fails if a function of this sm_90 image issues a read-only load (`LDG.E*.CONSTANT`, from
/// `ld.global.nc` / `__ldg`) before its first `griddepcontrol.wait` (`ACQBULK` in SASS).
/// ptxas moves such loads above the wait (it did with the activation scale in
/// `lowrank_wgmma`), and under programmatic dependent launch the kernel before may still be
/// writing what they read. Weight loads (`lb_ldw` in common.cuh: `ld.global.nc.L1::no_allocate`,
/// `LDG.E.NA*.CONSTANT` in SASS) are the exception, within limits: `lowrank_wgmma`'s ternary2
/// tile is read before the wait by design (its chain, `lb_pdl_chain`); a small-M kernel loads
/// its first weight batch there only with frozen weights (`LB_PF_EARLY`), and after the wait
/// otherwise, so it must have at least as many weight loads after the wait as before it (had
/// ptxas hoisted the after-the-wait copy, which reads weights an earlier kernel may write, the
/// count before would exceed it; sm_90 images of 2026-12-06: one batch of 20, 40 or 80 loads
/// before, 20 to 160 after). Needs `LOWBIT_NVDISASM` (an nvdisasm binary); says once that it
/// skipped otherwise.
#[cfg(test)]
fn check_pdl_load_order(name: &str, image: &[u8]) {
    static SKIP_NOTE: std::sync::Once = std::sync::Once::new();
    let Ok(tool) = std::env::var("LOWBIT_NVDISASM") else {
        SKIP_NOTE.call_once(|| {
            eprintln!("SKIPPED: LOWBIT_NVDISASM unset; loads before the PDL wait not checked")
        });
        return;
    };
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("lowbit-pdl-{}-{n}.cubin", std::process::id()));
    std::fs::write(&file, image).unwrap();
    let out = std::process::Command::new(&tool)
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{tool} failed on {name}");
    let sass = String::from_utf8_lossy(&out.stdout);
    for f in pdl_load_order(&sass) {
        assert!(
            f.early.is_empty(),
            "{name}: {} issues {} read-only load(s) other than weights' before \
             griddepcontrol.wait:\n{}",
            f.function,
            f.early.len(),
            f.early.join("\n")
        );
        assert!(
            f.function.starts_with("lowrank_wgmma") || f.weights_before <= f.weights_after,
            "{name}: {} loads weights {} times before griddepcontrol.wait and {} after: \
             loads that belong after the wait were moved above it",
            f.function,
            f.weights_before,
            f.weights_after
        );
    }
}

/// One function of an `nvdisasm -c` listing that waits on `griddepcontrol.wait`.
#[cfg(test)]
struct PdlLoads<'a> {
    function: String,
    /// Read-only loads other than weight loads scheduled before its first wait.
    early: Vec<&'a str>,
    /// Weight loads (`LDG.E.NA*.CONSTANT`) before and after that wait.
    weights_before: usize,
    weights_after: usize,
}

#[cfg(test)]
fn pdl_load_order(sass: &str) -> Vec<PdlLoads<'_>> {
    let read_only = |l: &str| l.contains("LDG.") && l.contains(".CONSTANT");
    let weight = |l: &str| read_only(l) && l.contains(".NA.");
    sass_functions(sass)
        .into_iter()
        .filter_map(|(function, body)| {
            let wait = body.iter().position(|l| l.contains("ACQBULK"))?;
            let (before, after) = body.split_at(wait);
            Some(PdlLoads {
                function,
                early: before
                    .iter()
                    .filter(|l| read_only(l) && !weight(l))
                    .map(|l| l.trim())
                    .collect(),
                weights_before: before.iter().filter(|l| weight(l)).count(),
                weights_after: after.iter().filter(|l| weight(l)).count(),
            })
        })
        .collect()
}

/// The functions of an `nvdisasm -c` listing: (name, its lines).
#[cfg(test)]
fn sass_functions(sass: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in sass.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(".text.") {
            out.push((rest.trim_end_matches(':').to_string(), Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line);
        }
    }
    out
}

/// The "N bytes spill stores" of a ptxas report (the largest, if several functions).
#[cfg(test)]
fn spill_store_bytes(log: &str) -> usize {
    log.lines()
        .filter_map(|l| {
            let i = l.find(" bytes spill stores")?;
            l[..i].rsplit(' ').next()?.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{pdl_load_order, spill_store_bytes};

    /// The load-order check on a listing shaped like nvdisasm's: a read-only load before the
    /// wait counts, a coherent one, a weight load (`.NA`), a cp.async or a load after the wait
    /// does not; weight loads are counted on both sides of the wait; a function without a
    /// wait is not reported.
    #[test]
    fn loads_before_the_pdl_wait_parse() {
        let sass = "\t.section\t.text.k1,\"ax\",@progbits
.text.k1:
        /*0010*/               @P0 LDG.E.CONSTANT R4, desc[UR4][R4.64] ;
        /*0020*/                   LDG.E.STRONG.GPU R5, desc[UR4][R6.64] ;
        /*0028*/                   LDG.E.NA.128.CONSTANT R12, desc[UR4][R14.64] ;
        /*0030*/                   LDGSTS.E [R7], desc[UR4][R8.64] ;
        /*0040*/                   ACQBULK ;
        /*0050*/                   LDG.E.128.CONSTANT R8, desc[UR4][R10.64] ;
        /*0060*/               @P1 LDG.E.NA.CONSTANT R9, desc[UR4][R10.64] ;
        /*0070*/                   LDG.E.NA.128.CONSTANT R12, desc[UR4][R14.64] ;
//--------------------- .text.k2 --------------------------
.text.k2:
        /*0010*/                   LDG.E.CONSTANT R4, desc[UR4][R4.64] ;
        /*0020*/                   EXIT ;
";
        let found = pdl_load_order(sass);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].function, "k1");
        assert_eq!(found[0].early.len(), 1);
        assert!(found[0].early[0].contains("@P0 LDG.E.CONSTANT R4"));
        assert_eq!((found[0].weights_before, found[0].weights_after), (1, 2));
    }

    #[test]
    fn spill_report_parses() {
        let log =
            "ptxas         .     8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads";
        assert_eq!(spill_store_bytes(log), 12);
        assert_eq!(spill_store_bytes("Used 128 registers"), 0);
    }
}
