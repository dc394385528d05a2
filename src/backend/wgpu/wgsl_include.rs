//! `// #include "FILE"` lines in the crate's WGSL (the language has no includes): a line that
//! is exactly such a comment is replaced by the text of `shaders/FILE`. One level only: an
//! included file includes nothing, and each file is included at most once per module.
//!
//! Shared by `build.rs` (which validates every expanded module with naga and maps an error's
//! line back to its file) and the wgpu backend (which expands a module once, when it first
//! builds it). No dependencies beyond `std`.

/// The directive's prefix; the rest of the line is the file name in double quotes.
pub const INCLUDE: &str = "// #include ";

/// The file named by `line` if it is an include directive: `Ok(None)` if it is not one,
/// `Err` if it starts like one but is malformed.
pub fn included(line: &str) -> Result<Option<&str>, String> {
    let Some(rest) = line.trim_end().strip_prefix(INCLUDE) else {
        return Ok(None);
    };
    match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(name) if !name.is_empty() && !name.contains(['"', '/', '\\']) => Ok(Some(name)),
        _ => Err(format!(
            "malformed `{line}`: expected {INCLUDE}\"FILE.wgsl\""
        )),
    }
}

/// A module's text with its includes expanded, and where each of its lines comes from.
#[derive(Clone, Debug)]
pub struct Expanded {
    pub text: String,
    /// (file, 1-based line in that file) of each line of `text`.
    pub origin: Vec<(String, usize)>,
}

impl Expanded {
    /// "FILE:LINE" of the expanded module's 1-based line `line` (for build.rs's messages).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn locate(&self, line: usize) -> String {
        match line.checked_sub(1).and_then(|i| self.origin.get(i)) {
            Some((file, l)) => format!("{file}:{l}"),
            None => format!("line {line} of the expanded module"),
        }
    }
}

/// Expands module `name` (whose text is `src`), `file` giving an included file's text.
pub fn expand<'a>(
    name: &str,
    src: &str,
    file: impl Fn(&str) -> Option<&'a str>,
) -> Result<Expanded, String> {
    let mut out = Expanded {
        text: String::with_capacity(src.len()),
        origin: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        let Some(inc) = included(line).map_err(|e| format!("{at}: {e}"))? else {
            push(&mut out, line, name, i + 1);
            continue;
        };
        if seen.contains(&inc) {
            return Err(format!("{at}: `{inc}` is included twice"));
        }
        seen.push(inc);
        let body = file(inc).ok_or_else(|| format!("{at}: no WGSL file `{inc}`"))?;
        for (j, l) in body.lines().enumerate() {
            if included(l)
                .map_err(|e| format!("{inc}:{}: {e}", j + 1))?
                .is_some()
            {
                return Err(format!(
                    "{inc}:{}: included files include nothing (one level)",
                    j + 1
                ));
            }
            push(&mut out, l, inc, j + 1);
        }
    }
    Ok(out)
}

fn push(out: &mut Expanded, line: &str, file: &str, n: usize) {
    out.text.push_str(line);
    out.text.push('\n');
    out.origin.push((file.to_string(), n));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(name: &str) -> Option<&'static str> {
        match name {
            "a.wgsl" => Some("fn a() {}\nfn a2() {}"),
            "nested.wgsl" => Some("// #include \"a.wgsl\""),
            _ => None,
        }
    }

    #[test]
    fn expands_and_locates() {
        let e = expand(
            "m.wgsl",
            "// head\n// #include \"a.wgsl\"\nfn m() {}\n",
            files,
        )
        .unwrap();
        assert_eq!(e.text, "// head\nfn a() {}\nfn a2() {}\nfn m() {}\n");
        assert_eq!(e.locate(1), "m.wgsl:1");
        assert_eq!(e.locate(3), "a.wgsl:2");
        assert_eq!(e.locate(4), "m.wgsl:3");
        assert_eq!(e.locate(9), "line 9 of the expanded module");
        assert_eq!(e.locate(0), "line 0 of the expanded module");
    }

    #[test]
    fn refuses_what_it_cannot_expand() {
        let err = |src: &str| expand("m.wgsl", src, files).unwrap_err();
        assert!(err("// #include \"b.wgsl\"").contains("no WGSL file `b.wgsl`"));
        assert!(err("// #include a.wgsl").contains("malformed"));
        assert!(err("// #include \"../a.wgsl\"").contains("malformed"));
        assert!(err("// #include \"a.wgsl\"\n// #include \"a.wgsl\"").contains("twice"));
        assert!(err("// #include \"nested.wgsl\"").contains("one level"));
        // Other comments are text.
        let e = expand("m.wgsl", "// #includes are expanded", files).unwrap();
        assert_eq!(e.text, "// #includes are expanded\n");
    }
}
