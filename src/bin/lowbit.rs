//! `lowbit`: probe the machine, verify every backend against the reference, benchmark the ops,
//! and run one op on safetensors files (to check the crate against a numpy/PyTorch model).

#[path = "lowbit/args.rs"]
mod args;
#[path = "lowbit/bench.rs"]
mod bench;
#[path = "lowbit/json.rs"]
mod json;
#[path = "lowbit/probe.rs"]
mod probe;
#[path = "lowbit/run.rs"]
mod run;
#[path = "lowbit/table.rs"]
mod table;
#[path = "lowbit/timers.rs"]
mod timers;
#[path = "lowbit/verify.rs"]
mod verify;

const USAGE: &str = "usage: lowbit <command> [options]

commands:
  probe    capability table of this machine (CPU, CUDA devices, wgpu adapters)
  verify   every op x backend x format against the CPU reference (exit 1 on mismatch)
  bench    time the ops at BDH shapes (D=256, H=4, N=8192)
  run      run one op on a safetensors file and write the result as safetensors

`lowbit <command> --help` shows the command's options.
environment: LOWBIT_REQUIRE=cuda,wgpu makes an unavailable backend an error.";

/// A subcommand: its exit code, or an error message (exit 2).
type Command = fn(&[String]) -> Result<i32, String>;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let rest = &argv[1..];
    let (usage, entry): (&str, Command) = match cmd.as_str() {
        "probe" => (probe::USAGE, probe::main),
        "verify" => (verify::USAGE, verify::main),
        "bench" => (bench::USAGE, bench::main),
        "run" => (run::USAGE, run::main),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return;
        }
        "-V" | "--version" => {
            println!("lowbit {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        other => {
            eprintln!("lowbit: unknown command {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        return;
    }
    match entry(rest) {
        Ok(code) => std::process::exit(code),
        Err(message) => {
            eprintln!("lowbit {cmd}: error: {message}");
            eprintln!("(see `lowbit {cmd} --help`)");
            std::process::exit(2);
        }
    }
}
