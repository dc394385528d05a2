//! The `lowbit` binary end to end: probe, verify (CPU), bench, `run` round trips through
//! safetensors files made here, helpful errors on bad input, and the Python round trip
//! (`tests/python_roundtrip.py`, skipped when numpy/safetensors are missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lowbit_kernels::testing::Rng;
use lowbit_kernels::{LowBitActivationFormat, LowBitWeightFormat, PackedWeightArtifact, reference};
use safetensors::Dtype;

/// The `lowbit` binary: `LOWBIT_BIN` when set (a bundle run on a machine where cargo's build
/// path does not exist: `benches/gpu/sweep.sh tests` sets it), else the one cargo built.
fn bin() -> String {
    std::env::var("LOWBIT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lowbit").to_string())
}

fn lowbit(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("LOWBIT_REQUIRE")
        .output()
        .expect("run lowbit")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn save(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Reads tensor `name` of a safetensors file: (dtype, shape, bytes).
fn load(path: &Path, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

fn load_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (dtype, shape, bytes) = load(path, name);
    assert_eq!(dtype, Dtype::F32, "{name}");
    let v = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, v)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn probe_prints_a_cpu_row_and_json() {
    let o = lowbit(&["probe"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.starts_with("backend"), "{out}");
    let cpu = out.lines().find(|l| l.starts_with("cpu")).expect("cpu row");
    assert!(
        cpu.contains("available") && cpu.contains("threads="),
        "{cpu}"
    );
    for gpu in ["cuda", "wgpu"] {
        assert!(
            out.lines().any(|l| l.starts_with(gpu)),
            "no {gpu} row:\n{out}"
        );
    }
    // The plan table: the packed reference is always there (the CPU backend always exists).
    assert!(out.contains("fallback reason"), "{out}");
    let packed = out
        .lines()
        .find(|l| l.starts_with("offline-pack inference, artifacts packed"))
        .expect("plan row");
    assert!(
        packed.contains("packed_reference") || packed.contains("packed_native_inference"),
        "{packed}"
    );
    assert!(out.contains("missing_packed_artifacts") && out.contains("quant_disabled"));

    let o = lowbit(&["probe", "--json"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.trim_start().starts_with('{') && out.trim_end().ends_with('}'));
    for key in [
        "\"cpu\"",
        "\"threads\"",
        "\"cuda\"",
        "\"wgpu\"",
        "\"plan\"",
        "\"runtime\"",
        "\"status\"",
    ] {
        assert!(out.contains(key), "{key} missing:\n{out}");
    }
}

#[test]
fn verify_cpu_is_bit_exact() {
    let o = lowbit(&["verify", "--backend", "cpu", "--cases", "2", "--seed", "3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "verify failed:\n{out}{err}");
    let header = out.lines().next().unwrap();
    for col in [
        "op",
        "backend",
        "variant",
        "format",
        "shape",
        "max abs err",
        "NMSE",
        "bit-exact",
        "time",
    ] {
        assert!(header.contains(col), "column {col} missing: {header}");
    }
    for op in [
        "quantize",
        "quantize_pack",
        "lowrank",
        "decoder_tail",
        "rho",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{op} "))),
            "no {op} rows"
        );
    }
    for v in ["codes+param", "packed+buffer", "f32+compute", "f32 float"] {
        assert!(out.contains(v), "no {v} rows");
    }
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("verify:") && summary.contains(" 0 failed"),
        "{summary}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn verify_json_and_skipped_backends() {
    let o = lowbit(&["verify", "--backend", "all", "--cases", "1", "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    for key in ["\"summary\"", "\"failed\": 0", "\"rows\"", "\"bit_exact\""] {
        assert!(out.contains(key), "{key} missing");
    }
    // Unavailable GPU backends are skipped, not failed, unless LOWBIT_REQUIRE names them.
    let caps = lowbit_kernels::Capabilities::get();
    if caps.cuda.available().is_none() {
        let o = Command::new(bin())
            .args(["verify", "--backend", "cuda", "--cases", "1"])
            .env("LOWBIT_REQUIRE", "cuda")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
        assert!(text(&o).0.contains("LOWBIT_REQUIRE"));
    }
}

/// `lowbit bench` at a tiny shape, 2 timed runs per case.
const SMALL_BENCH: [&str; 8] = ["--d", "20", "--h", "2", "--n", "33", "--iters", "2"];

#[test]
fn bench_small_cpu_sweep() {
    let dir = scratch("bench");
    let json = dir.join("bench.json");
    let peers = dir.join("peers.json");
    std::fs::write(
        &peers,
        r#"[{"op": "lowrank", "m": 3, "name": "torch_fp16", "us": 1000.0},
            {"op": "decoder_tail", "m": 3, "name": "torch_fp16", "us": 5.0}]"#,
    )
    .unwrap();
    let o = lowbit(
        &[
            &["bench", "--backend", "cpu", "--m", "1,3"][..],
            &SMALL_BENCH,
            &["--json", p(&json), "--peers", p(&peers)],
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("TOPS") && out.contains("GB/s") && out.contains("vs torch_fp16"));
    // 2 projection ops x 2 variants x 2 sizes + quantize x 2 sizes
    let rows = out.lines().filter(|l| l.starts_with("cpu ")).count();
    assert_eq!(rows, 10, "{out}");
    let written = std::fs::read_to_string(&json).unwrap();
    assert!(written.contains("\"rows\"") && written.contains("\"torch_fp16\""));
    // The run's options and each backend's measured copy bandwidth (benches/gpu/targets.py).
    for key in [
        "\"weights\": \"i8x4\"",
        "\"out\": \"f32\"",
        "\"relu\": false",
    ] {
        assert!(written.contains(key), "{key} missing: {written}");
    }
    assert!(written.contains("\"backends\"") && written.contains("\"copy_bandwidth_gbps\""));

    // The device-resident wgpu path (lavapipe in CI), with torch_peer.py's file format.
    if lowbit_kernels::Capabilities::get()
        .wgpu
        .available()
        .is_some()
    {
        std::fs::write(
            &peers,
            r#"{"card": "x", "cases": [{"op": "decoder_tail", "m": 3, "k": 66, "n": 20,
                "int_mm_ms": 0.5, "bf16_mm_ms": 0.25}]}"#,
        )
        .unwrap();
        let o = lowbit(
            &[
                &["bench", "--backend", "wgpu", "--m", "1,3"][..],
                &SMALL_BENCH,
                &["--peers", p(&peers)],
            ]
            .concat(),
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("wgpu ")).count(),
            10,
            "{out}"
        );
        assert!(
            out.contains("device (") && out.contains("vs int_mm") && out.contains("vs bf16_mm")
        );
    } else {
        println!("SKIPPED: no wgpu adapter: the device-resident bench path is not exercised");
    }

    let bad = lowbit(&["bench", "--op", "matmul"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("unknown op"));
    let bad = lowbit(&["bench", "--out", "f64"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("--out: unknown"));

    // A fused epilogue is timed on CUDA's device API only: the CPU is skipped, saying why.
    let o = lowbit(
        &[
            &[
                "bench",
                "--backend",
                "cpu",
                "--out",
                "bf16",
                "--relu",
                "--op",
                "lowrank",
                "--m",
                "1",
            ][..],
            &SMALL_BENCH,
        ]
        .concat(),
    );
    let (out, err) = text(&o);
    assert!(err.contains("CUDA's device API only"), "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("cpu ")).count(),
        0,
        "{out}"
    );
}

#[test]
fn run_lowrank_round_trips_and_matches_the_reference() {
    let dir = scratch("lowrank");
    let mut rng = Rng::new(11);
    let (x_shape, w_shape, latent_out) = ([2usize, 1, 3, 13], [3usize, 13, 10], 7);
    let x = rng.normals(x_shape.iter().product(), 1.0);
    let w = rng.normals(w_shape.iter().product(), 0.05);
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    save(
        &input,
        &[
            ("x", Dtype::F32, x_shape.to_vec(), f32_bytes(&x)),
            ("weight", Dtype::F32, w_shape.to_vec(), f32_bytes(&w)),
        ],
    );
    for (act, wf) in [
        ("int8", LowBitWeightFormat::Ternary158),
        ("uint8pos", LowBitWeightFormat::Int8),
        ("none", LowBitWeightFormat::Sign1),
    ] {
        let o = lowbit(&[
            "run",
            "lowrank",
            "--input",
            p(&input),
            "--output",
            p(&output),
            "--act-format",
            act,
            "--weight-format",
            wf.as_str(),
            "--latent-out",
            &latent_out.to_string(),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        let artifact = PackedWeightArtifact::from_values(&w, &w_shape, wf).unwrap();
        let fmt = LowBitActivationFormat::parse(act).unwrap();
        let want = reference::lowrank_projection(
            &x,
            x_shape,
            &artifact,
            fmt.qmax().map(|_| fmt),
            latent_out,
        )
        .unwrap();
        let (shape, got) = load_f32(&output, "out");
        assert_eq!(shape, vec![2, 3, 3, latent_out]);
        if fmt.qmax().is_some() {
            assert_eq!(got, want, "{act}/{wf:?} not bit-exact");
            let (_, a) = load_f32(&output, "act_scale");
            assert_eq!(a.len(), 1);
        } else {
            let r = lowbit_kernels::testing::compare_f32(&want, &got);
            assert!(
                r.nmse <= lowbit_kernels::testing::tol::FLOAT_PATH_NMSE,
                "{r}"
            );
        }
        let (_, ws) = load_f32(&output, "weight_scale");
        assert_eq!(ws, vec![artifact.scale]);
        let (dtype, wshape, codes) = load(&output, "weight_codes");
        assert_eq!((dtype, wshape), (Dtype::I8, w_shape.to_vec()));
        let want_codes: Vec<u8> = artifact.codes().unwrap().iter().map(|&c| c as u8).collect();
        assert_eq!(codes, want_codes);
    }
}

#[test]
fn run_decoder_tail_with_weight_codes() {
    let dir = scratch("decoder");
    let mut rng = Rng::new(12);
    let (y_shape, lart, dim) = ([1usize, 2, 4, 9], 11usize, 6usize);
    let y = rng.normals(y_shape.iter().product(), 1.0);
    let codes = rng.int8_codes(2 * lart * dim);
    let w_scale = 0.03f32;
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    save(
        &input,
        &[
            ("y", Dtype::F32, y_shape.to_vec(), f32_bytes(&y)),
            (
                "weight_codes",
                Dtype::I8,
                vec![2 * lart, dim],
                codes.iter().map(|&c| c as u8).collect(),
            ),
            ("weight_scale", Dtype::F32, vec![1], f32_bytes(&[w_scale])),
        ],
    );
    let o = lowbit(&[
        "run",
        "decoder-tail",
        "--input",
        p(&input),
        "--output",
        p(&output),
        "--act-format",
        "int4",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let artifact = PackedWeightArtifact::from_codes(
        &codes,
        &[2 * lart, dim],
        w_scale,
        lowbit_kernels::PackedWeightEncoding::Int8,
    )
    .unwrap();
    let want = reference::decoder_tail(
        &y,
        y_shape,
        &artifact,
        Some(LowBitActivationFormat::Int4Exp),
    )
    .unwrap();
    let (shape, got) = load_f32(&output, "out");
    assert_eq!(shape, vec![1, 1, 4, dim]);
    assert_eq!(got, want);
}

#[test]
fn run_quantize_and_rho_pack() {
    let dir = scratch("quantize");
    let mut rng = Rng::new(13);
    let x = rng.normals(5 * 7, 2.0);
    let rho = rng.normals(2 * 3 * 5 * 7, 0.1);
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    save(
        &input,
        &[
            ("x", Dtype::F32, vec![5, 7], f32_bytes(&x)),
            ("rho", Dtype::F32, vec![2, 3, 5, 7], f32_bytes(&rho)),
        ],
    );
    let o = lowbit(&[
        "run",
        "quantize",
        "--input",
        p(&input),
        "--output",
        p(&output),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let q = lowbit_kernels::quant::quantize_activations(&x, LowBitActivationFormat::Int8).unwrap();
    let (dtype, shape, codes) = load(&output, "codes");
    assert_eq!((dtype, shape), (Dtype::I8, vec![5, 7]));
    let want: Vec<u8> = q.codes_i32().iter().map(|&c| c as i8 as u8).collect();
    assert_eq!(codes, want);
    assert_eq!(load_f32(&output, "scales").1, vec![q.scale().unwrap()]);

    for (mode, bytes_per_block) in [("int8", 32), ("ternary", 8), ("binary", 4)] {
        let o = lowbit(&[
            "run",
            "rho-pack",
            "--input",
            p(&input),
            "--output",
            p(&output),
            "--rho-compression",
            mode,
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert!(
            out.contains("mean abs err") && out.contains("quality gate"),
            "{out}"
        );
        let (_, scales) = load_f32(&output, "scales");
        assert_eq!(scales.len(), rho.len().div_ceil(32));
        let (_, restored) = load_f32(&output, "out");
        assert_eq!(restored.len(), rho.len());
        let (_, _, packed) = load(&output, "packed");
        assert!(packed.len() <= scales.len() * bytes_per_block, "{mode}");
        if mode == "int8" {
            let shape = lowbit_kernels::ops::rho::RhoShape::new([2, 3, 5, 7]).unwrap();
            let (w, s) = reference::rho::rho_int8_pack_words(&shape, &rho).unwrap();
            assert_eq!(scales, s);
            let want = reference::rho::rho_int8_unpack_words(&shape, &w, &s).unwrap();
            assert_eq!(restored, want);
        }
    }
}

#[test]
fn bad_inputs_fail_with_a_helpful_message() {
    let dir = scratch("bad");
    let input = dir.join("in.safetensors");
    let mismatched = dir.join("mismatched.safetensors");
    let output = dir.join("out.safetensors");
    let x = f32_bytes(&[0.5f32; 2 * 3 * 8]);
    save(
        &input,
        &[
            ("x", Dtype::F32, vec![2, 3, 8], x.clone()),
            ("weight", Dtype::F32, vec![2, 8, 4], f32_bytes(&[0.1; 64])),
            ("y", Dtype::F64, vec![2], vec![0; 16]),
            ("weight_scale", Dtype::F32, vec![2], f32_bytes(&[0.1; 2])),
        ],
    );
    save(
        &mismatched,
        &[
            ("x", Dtype::F32, vec![2, 3, 8], x),
            ("weight", Dtype::F32, vec![2, 5, 4], f32_bytes(&[0.1; 40])),
            ("weight_codes", Dtype::I8, vec![2, 5, 4], vec![0x80; 40]),
        ],
    );
    let cases: &[(&Path, &[&str], &str)] = &[
        // x's D = 8 but the weight's D = 5 (`weight_codes` also holds the invalid -128)
        (
            &mismatched,
            &["run", "lowrank"],
            "`weight_codes` holds -128",
        ),
        (&input, &["run", "decoder-tail"], "`y` has dtype F64"),
        (&input, &["run", "rho-pack"], "missing tensor `rho`"),
        (&input, &["run", "matmul"], "unknown op"),
        (
            &input,
            &["run", "lowrank", "--act-format", "int9"],
            "--act-format",
        ),
        (
            &input,
            &["run", "lowrank", "--latent-out", "99"],
            "latent_out",
        ),
        (
            &input,
            &["run", "quantize", "--act-format", "none"],
            "quantize needs",
        ),
        (
            &input,
            &["run", "lowrank", "--bogus", "1"],
            "unknown option --bogus",
        ),
    ];
    for (file, args, needle) in cases {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--input", p(file), "--output", p(&output)]);
        let o = lowbit(&all);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {out}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    save(
        &mismatched,
        &[
            ("x", Dtype::F32, vec![2, 3, 8], f32_bytes(&[0.5f32; 48])),
            ("weight", Dtype::F32, vec![2, 5, 4], f32_bytes(&[0.1; 40])),
        ],
    );
    let o = lowbit(&[
        "run",
        "lowrank",
        "--input",
        p(&mismatched),
        "--output",
        p(&output),
    ]);
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(
        err.contains("`x` [2, 3, 8] and `weight` [2, 5, 4] do not fit"),
        "{err}"
    );
    let o = lowbit(&[
        "run",
        "quantize",
        "--input",
        "/nonexistent/in.safetensors",
        "--output",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("/nonexistent/in.safetensors"));
    std::fs::write(&input, b"not a safetensors file").unwrap();
    let o = lowbit(&[
        "run",
        "quantize",
        "--input",
        p(&input),
        "--output",
        p(&output),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("not a valid safetensors file"));
    let o = lowbit(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = lowbit(&["verify", "--cases", "x"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn python_numpy_round_trip() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "SKIPPED: python3 with numpy and safetensors not found (pip install numpy safetensors)"
        );
        eprintln!("SKIPPED: python3 with numpy and safetensors not found");
        return;
    }
    let dir = scratch("python");
    let script = dir.join("python_roundtrip.py");
    std::fs::write(&script, include_str!("python_roundtrip.py")).unwrap();
    let o = Command::new("python3")
        .arg(&script)
        .arg(bin())
        .arg(&dir)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    println!("{out}");
    assert!(
        o.status.success(),
        "python round trip failed:\n{out}\n{err}"
    );
    assert!(out.contains("all checks passed"));
}
