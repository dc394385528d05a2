//! `lowbit probe`: what this machine can run.

use lowbit_kernels::caps::BackendProbe;
use lowbit_kernels::plan::{
    LowBitKernelCapabilities, LowBitKernelPlan, explain_ops, explain_with_config,
    resolve_low_bit_kernel_plan_from_packed_static_ready,
};
use lowbit_kernels::{
    Capabilities, LowBitActivationFormat, LowBitInferenceMode, LowBitQuantizationConfig,
    LowBitTrainingMode, LowBitWeightFormat,
};

use crate::args::Args;
use crate::json::{Json, obj};
use crate::table;

pub const USAGE: &str = "lowbit probe [--json] [--act-format int8|int4|uint8pos|none]
             [--weight-format ternary|sign1|int8] [--x-weight-format ternary|sign1|int8]
  Prints the capability table: the CPU (threads, arch, SIMD), every CUDA device and every wgpu
  adapter (GPU rows say 'not built' or 'unavailable: <reason>'), then the plan each projection
  would get on this machine (runtime kind and fallback reason) for offline-pack inference,
  train-kernel training and runtime fake quantization. The formats default to the seed's
  config: int8 activations, ternary y/decoder-tail weights, int8 x-projection weights. Last, the
  kernel path each op/input/format takes (cuda-mma > cuda-dp4a > wgsl > cpu; LOWBIT_BACKEND,
  LOWBIT_CUDA_KERNELS and LOWBIT_WGPU_DOT4 honoured) and why each better path was skipped.";

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(
        tokens,
        &["act-format", "weight-format", "x-weight-format"],
        &["json"],
    )?;
    args.at_most_positional(0)?;
    let mut config = LowBitQuantizationConfig {
        enable: true,
        ..Default::default()
    };
    if let Some(v) = args.value("act-format") {
        config.act_format = LowBitActivationFormat::parse(v)
            .ok_or_else(|| format!("--act-format: unknown {v:?} (int8, int4, uint8pos, none)"))?;
    }
    let weight = |flag: &str| -> Result<Option<LowBitWeightFormat>, String> {
        args.value(flag)
            .map(|v| {
                LowBitWeightFormat::parse(v)
                    .ok_or_else(|| format!("--{flag}: unknown {v:?} (ternary, sign1, int8)"))
            })
            .transpose()
    };
    if let Some(f) = weight("weight-format")? {
        config.weight_format = f;
    }
    if let Some(f) = weight("x-weight-format")? {
        config.decoder_x_mode = f;
    }
    let caps = Capabilities::get();
    let plan_caps = LowBitKernelCapabilities::from_probe(caps);
    let scenarios = scenarios(&config, plan_caps);
    if args.switch("json") {
        let mut json = caps_json(caps);
        if let Json::Obj(pairs) = &mut json {
            pairs.push(("plan".into(), plan_json(plan_caps, &config, &scenarios)));
            pairs.push(("kernel_paths".into(), kernel_paths_json(caps)));
        }
        print!("{}", json.pretty());
    } else {
        print!("{}", caps_table(caps));
        println!();
        println!(
            "plan capabilities (from this probe): packed_reference={} native_projection={} \
             native_decoder_tail={} native_rho_int8_block={}",
            yes_no(plan_caps.packed_reference_supported),
            yes_no(plan_caps.native_projection_supported),
            yes_no(plan_caps.native_decoder_tail_supported),
            yes_no(plan_caps.native_rho_int8_block_supported),
        );
        print!("{}", plan_table(&scenarios));
        println!();
        print!("{}", kernel_paths_table(caps));
    }
    Ok(0)
}

/// The kernel path each op/input/format takes here (LOWBIT_BACKEND, LOWBIT_CUDA_KERNELS and
/// LOWBIT_WGPU_DOT4 honoured), and why each better path was skipped.
fn kernel_paths(caps: &Capabilities) -> Vec<lowbit_kernels::dispatch::PathPlan> {
    use lowbit_kernels::dispatch::{PathOverrides, PathRequest, plan_path};
    let overrides = PathOverrides::from_env();
    PathRequest::summary()
        .into_iter()
        .map(|req| plan_path(caps, &overrides, req))
        .collect()
}

fn kernel_paths_table(caps: &Capabilities) -> String {
    let rows: Vec<Vec<String>> = kernel_paths(caps)
        .iter()
        .map(|p| {
            let chosen = p
                .chosen()
                .map_or("none".to_string(), |c| format!("{c}{}", p.detail(c)));
            let skipped = p
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.path, s.reason))
                .collect::<Vec<_>>()
                .join("; ");
            vec![p.request.label(), chosen, skipped]
        })
        .collect();
    table::render(
        &["kernel path (op/input/format)", "chosen", "skipped (why)"],
        &rows,
    )
}

fn kernel_paths_json(caps: &Capabilities) -> Json {
    Json::Arr(
        kernel_paths(caps)
            .iter()
            .map(|p| {
                obj([
                    ("op", Json::from(p.request.op.as_str())),
                    ("input", Json::from(p.request.input.as_str())),
                    ("format", Json::from(p.request.format.as_str())),
                    (
                        "chosen",
                        p.chosen().map_or(Json::Null, |c| Json::from(c.as_str())),
                    ),
                    (
                        "candidates",
                        Json::Arr(
                            p.candidates
                                .iter()
                                .map(|c| Json::from(c.as_str()))
                                .collect(),
                        ),
                    ),
                    (
                        "wgsl_dot4",
                        p.wgsl_dot4.map_or(Json::Null, |d| Json::from(d.as_str())),
                    ),
                    (
                        "skipped",
                        Json::Arr(
                            p.skipped
                                .iter()
                                .map(|s| {
                                    obj([
                                        ("path", Json::from(s.path.as_str())),
                                        ("reason", Json::from(s.reason.to_string())),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect(),
    )
}

/// The configurations the plan table shows: the same formats under each mode.
fn scenarios(
    base: &LowBitQuantizationConfig,
    caps: LowBitKernelCapabilities,
) -> Vec<(&'static str, LowBitQuantizationConfig, LowBitKernelPlan)> {
    let offline = LowBitQuantizationConfig {
        inference_mode: LowBitInferenceMode::OfflinePack,
        ..base.clone()
    };
    let training = LowBitQuantizationConfig {
        training_mode: LowBitTrainingMode::TrainKernelExp,
        ..base.clone()
    };
    let disabled = LowBitQuantizationConfig {
        enable: false,
        ..base.clone()
    };
    [
        (
            "offline-pack inference, artifacts packed",
            offline.clone(),
            true,
        ),
        ("offline-pack inference, no artifacts", offline, false),
        ("train-kernel training", training, false),
        ("runtime fake quant", base.clone(), false),
        ("quantization disabled", disabled, false),
    ]
    .into_iter()
    .map(|(name, config, packed)| {
        let plan = resolve_low_bit_kernel_plan_from_packed_static_ready(&config, packed, caps);
        (name, config, plan)
    })
    .collect()
}

fn plan_rows(
    scenarios: &[(&'static str, LowBitQuantizationConfig, LowBitKernelPlan)],
) -> Vec<[String; 7]> {
    let mut rows = Vec::new();
    for (name, config, plan) in scenarios {
        let fallback = plan
            .fallback_reason
            .map_or("-".to_string(), |r| r.as_str().to_string());
        let ops = explain_ops(config, plan);
        if ops.is_empty() {
            rows.push([
                name.to_string(),
                "all".into(),
                "-".into(),
                "-".into(),
                plan.runtime.as_str().into(),
                fallback.clone(),
                "float".into(),
            ]);
        }
        for op in ops {
            rows.push([
                name.to_string(),
                op.role.into(),
                op.weight_format.as_str().into(),
                op.activation_format.as_str().into(),
                op.runtime.as_str().into(),
                fallback.clone(),
                op.math.into(),
            ]);
        }
    }
    rows
}

const PLAN_HEADER: [&str; 7] = [
    "scenario",
    "op",
    "weights",
    "activations",
    "runtime",
    "fallback reason",
    "math",
];

fn plan_table(scenarios: &[(&'static str, LowBitQuantizationConfig, LowBitKernelPlan)]) -> String {
    let rows: Vec<Vec<String>> = plan_rows(scenarios)
        .into_iter()
        .map(|r| r.to_vec())
        .collect();
    let mut out = table::render(&PLAN_HEADER, &rows);
    for (name, note) in notes(scenarios) {
        out.push_str(&format!("note ({name}): {note}\n"));
    }
    out
}

/// The plan's own remarks (e.g. why the native training forward was not chosen).
fn notes(
    scenarios: &[(&'static str, LowBitQuantizationConfig, LowBitKernelPlan)],
) -> Vec<(&'static str, String)> {
    scenarios
        .iter()
        .filter_map(|(name, config, plan)| {
            explain_with_config(config, plan)
                .lines()
                .find_map(|l| l.strip_prefix("note: "))
                .map(|n| (*name, n.to_string()))
        })
        .collect()
}

fn plan_json(
    caps: LowBitKernelCapabilities,
    config: &LowBitQuantizationConfig,
    scenarios: &[(&'static str, LowBitQuantizationConfig, LowBitKernelPlan)],
) -> Json {
    let keys = [
        "scenario",
        "op",
        "weight_format",
        "activation_format",
        "runtime",
        "fallback_reason",
        "math",
    ];
    obj([
        (
            "capabilities",
            obj([
                (
                    "packed_reference_supported",
                    caps.packed_reference_supported.into(),
                ),
                (
                    "native_low_bit_supported",
                    caps.native_low_bit_supported.into(),
                ),
                (
                    "native_projection_supported",
                    caps.native_projection_supported.into(),
                ),
                (
                    "native_decoder_tail_supported",
                    caps.native_decoder_tail_supported.into(),
                ),
                (
                    "native_rho_int8_block_supported",
                    caps.native_rho_int8_block_supported.into(),
                ),
            ]),
        ),
        ("act_format", config.act_format.as_str().into()),
        ("weight_format", config.weight_format.as_str().into()),
        ("x_weight_format", config.decoder_x_mode.as_str().into()),
        (
            "notes",
            Json::Obj(
                notes(scenarios)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Json::Str(v)))
                    .collect(),
            ),
        ),
        (
            "ops",
            Json::Arr(
                plan_rows(scenarios)
                    .into_iter()
                    .map(|row| {
                        Json::Obj(
                            keys.iter()
                                .zip(row)
                                .map(|(k, v)| {
                                    let v = if v == "-" { Json::Null } else { Json::Str(v) };
                                    (k.to_string(), v)
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        ),
    ])
}

/// One row per device: backend, device, status, details.
fn caps_rows(caps: &Capabilities) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "cpu".into(),
        caps.cpu.arch.into(),
        "available".into(),
        format!(
            "threads={} simd={}",
            caps.cpu.threads,
            if caps.cpu.simd.is_empty() {
                "-".into()
            } else {
                caps.cpu.simd.join(",")
            }
        ),
    ]];
    match &caps.cuda {
        BackendProbe::Available(cuda) => {
            let versions = format!(
                "driver={} nvrtc={}",
                cuda.driver_version.map_or("?".into(), |v| format!(
                    "{}.{}",
                    v / 1000,
                    (v % 1000) / 10
                )),
                cuda.nvrtc_version
                    .map_or("?".into(), |(a, b)| format!("{a}.{b}"))
            );
            if cuda.devices.is_empty() {
                rows.push(vec![
                    "cuda".into(),
                    "-".into(),
                    "unavailable: no CUDA device".into(),
                    versions.clone(),
                ]);
            }
            for d in &cuda.devices {
                rows.push(vec![
                    format!("cuda:{}", d.ordinal),
                    d.name.clone(),
                    "available".into(),
                    format!(
                        "sm_{}{} SMs={} mem={:.1}GiB dp4a={} int8_mma={} pdl={} wgmma={} {versions}",
                        d.compute_capability.0,
                        d.compute_capability.1,
                        d.multiprocessors,
                        d.memory_bytes as f64 / (1u64 << 30) as f64,
                        yes_no(d.dp4a),
                        yes_no(d.int8_mma),
                        yes_no(d.programmatic_launch),
                        yes_no(d.wgmma),
                    ),
                ]);
            }
        }
        other => rows.push(vec![
            "cuda".into(),
            "-".into(),
            other.status(),
            String::new(),
        ]),
    }
    match &caps.wgpu {
        BackendProbe::Available(wgpu) => {
            if wgpu.adapters.is_empty() {
                rows.push(vec![
                    "wgpu".into(),
                    "-".into(),
                    "unavailable: no adapter".into(),
                    String::new(),
                ]);
            }
            for a in &wgpu.adapters {
                rows.push(vec![
                    format!("wgpu:{}", a.index),
                    a.name.clone(),
                    "available".into(),
                    format!(
                        "{} {} driver={} max_storage={}MiB subgroup={} f16={} native_dot4={}",
                        a.backend,
                        a.device_type,
                        [a.driver.trim(), a.driver_info.trim()]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" "),
                        a.max_storage_buffer_binding_size >> 20,
                        yes_no(a.subgroup),
                        yes_no(a.shader_f16),
                        yes_no(a.native_dot4),
                    ),
                ]);
            }
        }
        other => rows.push(vec![
            "wgpu".into(),
            "-".into(),
            other.status(),
            String::new(),
        ]),
    }
    rows
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn caps_table(caps: &Capabilities) -> String {
    table::render(
        &["backend", "device", "status", "details"],
        &caps_rows(caps),
    )
}

pub fn caps_json(caps: &Capabilities) -> Json {
    let cpu = obj([
        ("arch", caps.cpu.arch.into()),
        ("threads", caps.cpu.threads.into()),
        (
            "simd",
            Json::Arr(caps.cpu.simd.iter().map(|s| Json::from(*s)).collect()),
        ),
    ]);
    let cuda = match &caps.cuda {
        BackendProbe::Available(cuda) => obj([
            ("status", "available".into()),
            (
                "driver_version",
                cuda.driver_version.map(|v| v as f64).into(),
            ),
            (
                "nvrtc_version",
                cuda.nvrtc_version.map(|(a, b)| format!("{a}.{b}")).into(),
            ),
            (
                "devices",
                Json::Arr(
                    cuda.devices
                        .iter()
                        .map(|d| {
                            obj([
                                ("ordinal", d.ordinal.into()),
                                ("name", d.name.clone().into()),
                                (
                                    "compute_capability",
                                    format!(
                                        "{}.{}",
                                        d.compute_capability.0, d.compute_capability.1
                                    )
                                    .into(),
                                ),
                                ("multiprocessors", (d.multiprocessors as usize).into()),
                                ("memory_bytes", d.memory_bytes.into()),
                                ("dp4a", d.dp4a.into()),
                                ("int8_mma", d.int8_mma.into()),
                                ("programmatic_launch", d.programmatic_launch.into()),
                                ("wgmma", d.wgmma.into()),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]),
        other => unavailable_json(other),
    };
    let wgpu = match &caps.wgpu {
        BackendProbe::Available(wgpu) => obj([
            ("status", "available".into()),
            (
                "adapters",
                Json::Arr(
                    wgpu.adapters
                        .iter()
                        .map(|a| {
                            obj([
                                ("index", a.index.into()),
                                ("name", a.name.clone().into()),
                                ("backend", a.backend.clone().into()),
                                ("device_type", a.device_type.clone().into()),
                                ("driver", a.driver.clone().into()),
                                ("driver_info", a.driver_info.clone().into()),
                                (
                                    "max_storage_buffer_binding_size",
                                    a.max_storage_buffer_binding_size.into(),
                                ),
                                ("max_buffer_size", a.max_buffer_size.into()),
                                (
                                    "max_compute_workgroup_storage_size",
                                    (a.max_compute_workgroup_storage_size as usize).into(),
                                ),
                                (
                                    "max_compute_invocations_per_workgroup",
                                    (a.max_compute_invocations_per_workgroup as usize).into(),
                                ),
                                ("subgroup", a.subgroup.into()),
                                ("shader_f16", a.shader_f16.into()),
                                ("shader_int64", a.shader_int64.into()),
                                ("native_dot4", a.native_dot4.into()),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]),
        other => unavailable_json(other),
    };
    obj([("cpu", cpu), ("cuda", cuda), ("wgpu", wgpu)])
}

fn unavailable_json<T>(probe: &BackendProbe<T>) -> Json {
    match probe {
        BackendProbe::NotBuilt => obj([("status", "not built".into())]),
        BackendProbe::Unavailable(reason) => obj([
            ("status", "unavailable".into()),
            ("reason", reason.clone().into()),
        ]),
        BackendProbe::Available(_) => obj([("status", "available".into())]),
    }
}
