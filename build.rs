//! Parses and validates every `shaders/*.wgsl` with naga, so that a shader error is a build
//! error that names the file and line (the shaders are embedded with `include_str!`).

use std::path::{Path, PathBuf};

fn main() {
    let dir = Path::new("shaders");
    println!("cargo:rerun-if-changed=shaders");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut failed = false;
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        if let Err(msg) = check(path) {
            eprintln!("{msg}");
            failed = true;
        }
    }
    if let Err(msg) = check_shared_blocks(&files) {
        eprintln!("{msg}");
        failed = true;
    }
    if failed {
        eprintln!("error: WGSL validation failed (see above)");
        std::process::exit(1);
    }
}

fn check(path: &Path) -> Result<(), String> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let module =
        naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string_with_path(&src, &name))?;
    // The shaders use core WGSL only (dot4I8Packed is a language extension every naga
    // backend lowers, natively or by polyfill).
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string_with_path(&src, &name))?;
    Ok(())
}

/// Helper blocks copied between shaders (each shader is standalone WGSL) are delimited by
/// `// --- NAME (identical ...` and `// --- end NAME ---`; every copy must be identical.
fn check_shared_blocks(files: &[PathBuf]) -> Result<(), String> {
    let mut seen: Vec<(String, String, String)> = Vec::new(); // (block, first file, text)
    for path in files {
        let name = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
        for (i, line) in src.lines().enumerate() {
            let Some(rest) = line.strip_prefix("// --- ") else {
                continue;
            };
            let Some((block, _)) = rest.split_once(" (identical") else {
                continue;
            };
            let end = format!("// --- end {block} ---");
            let body: Vec<&str> = src
                .lines()
                .skip(i + 1)
                .take_while(|l| l.trim_end() != end)
                .collect();
            let text = body.join("\n");
            match seen.iter().find(|(b, _, _)| b == block) {
                Some((_, first, t)) if *t != text => {
                    return Err(format!(
                        "{name}:{}: block `{block}` differs from its copy in {first}",
                        i + 1
                    ));
                }
                Some(_) => {}
                None => seen.push((block.to_string(), name.clone(), text)),
            }
        }
    }
    Ok(())
}
