//! Hand-rolled argument parsing: `--flag value`, `--flag=value`, switches and positionals.

use lowbit_kernels::BackendKind;

/// Parsed arguments of one subcommand.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    /// Splits `tokens` by the flags this subcommand knows; unknown flags are an error.
    pub fn parse(
        tokens: &[String],
        value_flags: &[&str],
        switch_flags: &[&str],
    ) -> Result<Self, String> {
        let mut args = Self::default();
        let mut it = tokens.iter();
        while let Some(tok) = it.next() {
            if tok == "--" {
                args.positional.extend(it.by_ref().cloned());
                break;
            }
            let Some(flag) = tok.strip_prefix("--") else {
                args.positional.push(tok.clone());
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if value_flags.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                };
                args.values.push((name.to_string(), value));
            } else if switch_flags.contains(&name) && inline.is_none() {
                args.switches.push(name.to_string());
            } else {
                let mut known: Vec<String> = value_flags
                    .iter()
                    .map(|f| format!("--{f} V"))
                    .chain(switch_flags.iter().map(|f| format!("--{f}")))
                    .collect();
                known.sort();
                return Err(format!(
                    "unknown option --{name} (known: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(args)
    }

    /// The last value given for `--name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// `--name N` as a number, or `default`.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid number")),
        }
    }

    /// `--name a,b,c` as numbers, or `default`.
    pub fn numbers(&self, name: &str, default: &[usize]) -> Result<Vec<usize>, String> {
        match self.value(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--{name}: {s:?} is not a positive integer"))
                })
                .collect(),
        }
    }

    /// Rejects positional arguments beyond the first `n`.
    pub fn at_most_positional(&self, n: usize) -> Result<(), String> {
        match self.positional.get(n) {
            Some(extra) => Err(format!("unexpected argument {extra:?}")),
            None => Ok(()),
        }
    }
}

/// `cpu`, `cuda`, `wgpu`, `all` or a comma list of them.
pub fn parse_backends(value: Option<&str>) -> Result<Vec<BackendKind>, String> {
    let all = vec![BackendKind::Cpu, BackendKind::Cuda, BackendKind::Wgpu];
    let Some(value) = value else {
        return Ok(all);
    };
    let mut out = Vec::new();
    for part in value.split(',') {
        let kinds = match part.trim().to_ascii_lowercase().as_str() {
            "all" => all.clone(),
            "cpu" => vec![BackendKind::Cpu],
            "cuda" => vec![BackendKind::Cuda],
            "wgpu" | "wgsl" => vec![BackendKind::Wgpu],
            other => {
                return Err(format!(
                    "--backend: unknown backend {other:?} (cpu, cuda, wgpu or all)"
                ));
            }
        };
        for k in kinds {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn flags_values_and_positionals() {
        let a = Args::parse(
            &toks("lowrank --input a.st --m=1,2 --json x"),
            &["input", "m"],
            &["json"],
        )
        .unwrap();
        assert_eq!(a.positional, vec!["lowrank", "x"]);
        assert_eq!(a.value("input"), Some("a.st"));
        assert_eq!(a.numbers("m", &[]).unwrap(), vec![1, 2]);
        assert!(a.switch("json"));
        assert!(Args::parse(&toks("--nope"), &[], &[]).is_err());
        assert!(Args::parse(&toks("--input"), &["input"], &[]).is_err());
    }

    #[test]
    fn backends() {
        assert_eq!(parse_backends(Some("cpu")).unwrap(), vec![BackendKind::Cpu]);
        assert_eq!(parse_backends(Some("all")).unwrap().len(), 3);
        assert!(parse_backends(Some("tpu")).is_err());
    }
}
