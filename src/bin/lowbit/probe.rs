//! `lowbit probe`: what this machine can run.

use lowbit_kernels::Capabilities;
use lowbit_kernels::caps::BackendProbe;

use crate::args::Args;
use crate::json::{Json, obj};
use crate::table;

pub const USAGE: &str = "lowbit probe [--json]
  Prints the capability table: the CPU (threads, arch, SIMD), every CUDA device and every wgpu
  adapter; GPU rows say 'not built' or 'unavailable: <reason>'.";

pub fn main(tokens: &[String]) -> Result<i32, String> {
    let args = Args::parse(tokens, &[], &["json"])?;
    args.at_most_positional(0)?;
    let caps = Capabilities::get();
    if args.switch("json") {
        print!("{}", caps_json(caps).pretty());
    } else {
        print!("{}", caps_table(caps));
    }
    Ok(0)
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
                        "sm_{}{} SMs={} mem={:.1}GiB dp4a={} int8_mma={} {versions}",
                        d.compute_capability.0,
                        d.compute_capability.1,
                        d.multiprocessors,
                        d.memory_bytes as f64 / (1u64 << 30) as f64,
                        yes_no(d.dp4a),
                        yes_no(d.int8_mma),
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
                        if a.driver_info.is_empty() {
                            a.driver.clone()
                        } else {
                            format!("{} {}", a.driver, a.driver_info)
                        },
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
