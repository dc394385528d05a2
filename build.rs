//! Parses and validates every WGSL module in `shaders/` with naga, its `// #include` lines
//! expanded as the wgpu backend expands them (`src/backend/wgpu/wgsl_include.rs`), so that a
//! shader error is a build error that names the file and line. A file that another includes
//! is validated as part of each module that includes it.

use std::path::Path;

#[path = "src/backend/wgpu/wgsl_include.rs"]
#[allow(dead_code)]
mod wgsl_include;

fn main() {
    let dir = Path::new("shaders");
    println!("cargo:rerun-if-changed=shaders");
    let mut files: Vec<(String, String)> = Vec::new(); // (file name, text)
    let mut failed = false;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_none_or(|x| x != "wgsl") {
                continue;
            }
            println!("cargo:rerun-if-changed={}", path.display());
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match (name, std::fs::read_to_string(&path)) {
                (Some(name), Ok(text)) => files.push((name, text)),
                (_, Err(e)) => {
                    eprintln!("{}: {e}", path.display());
                    failed = true;
                }
                (None, _) => {}
            }
        }
    }
    files.sort();
    let file = |n: &str| files.iter().find(|(f, _)| f == n).map(|(_, t)| t.as_str());
    // Included files are not modules of their own.
    let mut includes: Vec<&str> = Vec::new();
    for (_, text) in &files {
        includes.extend(
            text.lines()
                .filter_map(|l| wgsl_include::included(l).ok().flatten()),
        );
    }
    for (name, text) in files
        .iter()
        .filter(|(n, _)| !includes.contains(&n.as_str()))
    {
        if let Err(msg) = check(name, text, file) {
            eprintln!("{msg}");
            failed = true;
        }
    }
    if failed {
        eprintln!("error: WGSL validation failed (see above)");
        std::process::exit(1);
    }
}

fn check<'a>(
    name: &str,
    text: &'a str,
    file: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), String> {
    let path = format!("shaders/{name}");
    let module = wgsl_include::expand(name, text, file).map_err(|e| format!("shaders/{e}"))?;
    let src = &module.text;
    let shown = format!("{path} (includes expanded)");
    let at = |line: Option<usize>| {
        line.map_or(String::new(), |l| {
            format!("\n  the line is shaders/{}", module.locate(l))
        })
    };
    let parsed = naga::front::wgsl::parse_str(src).map_err(|e| {
        let line = e.location(src).map(|l| l.line_number as usize);
        format!("{}{}", e.emit_to_string_with_path(src, &shown), at(line))
    })?;
    // naga 30 makes an unnamed override for each array length that is an override expression,
    // and its pipeline-constant pass (wgpu-hal, at pipeline creation) panics on a named
    // override declared after one: declare every override before such arrays.
    let mut unnamed = false;
    for (_, o) in parsed.overrides.iter() {
        match &o.name {
            None => unnamed = true,
            Some(n) if unnamed => {
                return Err(format!(
                    "{path}: override `{n}` is declared after an array sized by an override \
                     expression (naga then panics at pipeline creation): declare it before"
                ));
            }
            Some(_) => {}
        }
    }
    // The shaders use core WGSL only (dot4I8Packed is a language extension every naga
    // backend lowers, natively or by polyfill).
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&parsed)
    .map_err(|e| {
        let line = e.location(src).map(|l| l.line_number as usize);
        format!("{}{}", e.emit_to_string_with_path(src, &shown), at(line))
    })?;
    Ok(())
}
