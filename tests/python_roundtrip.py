#!/usr/bin/env python3
"""Round trip through `lowbit run` from Python: write inputs with safetensors.numpy, run the
CLI, and check its outputs against a numpy transcription of SPEC.md.

    python3 tests/python_roundtrip.py [PATH/TO/lowbit] [WORKDIR]

Integer paths must match bit for bit given the scales the CLI reports (which must match
numpy's within 1e-6 relative: numpy sums the mean in another order). Exit status 0 = pass.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

EPS = np.float32(1e-8)
F = np.float32


def round_half_away(q):
    """Rust's f32::round. In f64, |q| + 0.5 is exact for f32 q, so floor() is correct even
    just below 0.5 (where the f32 sum would round up)."""
    q = np.asarray(q, dtype=np.float32).astype(np.float64)
    return (np.sign(q) * np.floor(np.abs(q) + 0.5)).astype(np.float32)


def mean_f32(v):
    return F(np.mean(np.asarray(v, dtype=np.float64)))


def act_scale(x, fmt):
    qmax = {"int8": 127, "int4": 7, "uint8pos": 255}[fmt]
    v = np.maximum(x, F(0)) if fmt == "uint8pos" else np.abs(x)
    return np.maximum(np.maximum(F(2) * mean_f32(v), EPS) / F(qmax), EPS)


def act_codes(x, s, fmt):
    if fmt == "uint8pos":
        return np.clip(round_half_away(np.maximum(x, F(0)) / F(s)), 0, 255).astype(np.int64)
    qmax = {"int8": 127, "int4": 7}[fmt]
    return np.clip(round_half_away(x / F(s)), -qmax, qmax).astype(np.int64)


def ternary(w):
    s = np.maximum(mean_f32(np.abs(w)), EPS)
    codes = np.where(np.abs(w) / s >= F(1), np.where(w >= 0, 1, -1), 0).astype(np.int8)
    return codes, s


def dequant(acc, w_scale, a_scale):
    # (acc as f32 * w_scale) * a_scale, in f32, in that order.
    return (acc.astype(np.float32) * F(w_scale)) * F(a_scale)


failures = []


def check(name, cond, detail=""):
    status = "ok" if cond else "FAIL"
    print(f"  {status:4} {name}{(': ' + detail) if detail and not cond else ''}")
    if not cond:
        failures.append(name)


def close(a, b, rel=1e-6):
    return abs(float(a) - float(b)) <= rel * abs(float(b))


def run(binary, *args):
    proc = subprocess.run([binary, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        raise SystemExit(f"lowbit {' '.join(args)} exited with {proc.returncode}")
    return proc.stdout


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "target", "debug", "lowbit")
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="lowbit-py-")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(5)

    # lowrank: shared input (Hin = 1), D and N not multiples of 4, latent_out < N.
    B, T, D, H, N, LO = 2, 3, 37, 3, 29, 23
    x = rng.normal(0, 1.3, size=(B, 1, T, D)).astype(np.float32)
    w = rng.normal(0, 0.05, size=(H, D, N)).astype(np.float32)
    inp, outp = os.path.join(work, "lr_in.safetensors"), os.path.join(work, "lr_out.safetensors")
    save_file({"x": x, "weight": w}, inp)
    run(binary, "run", "lowrank", "--input", inp, "--output", outp,
        "--act-format", "int8", "--weight-format", "ternary", "--latent-out", str(LO))
    got = load_file(outp)
    print("lowrank (int8 x ternary):")
    wc, ws = ternary(w)
    a_s = act_scale(x, "int8")
    check("weight_scale", close(got["weight_scale"][0], ws), f"{got['weight_scale'][0]} vs {ws}")
    check("act_scale", close(got["act_scale"][0], a_s), f"{got['act_scale'][0]} vs {a_s}")
    check("weight_codes", np.array_equal(got["weight_codes"], wc))
    xq = act_codes(x, got["act_scale"][0], "int8")
    acc = np.einsum("bitd,hdn->bhtn", xq, got["weight_codes"].astype(np.int64))[..., :LO]
    want = dequant(acc, got["weight_scale"][0], got["act_scale"][0])
    check("out shape", got["out"].shape == (B, H, T, LO), str(got["out"].shape))
    check("out bit-exact", got["out"].shape == want.shape and np.array_equal(got["out"], want),
          f"max abs err {np.max(np.abs(got['out'] - want)) if got['out'].shape == want.shape else 'shape'}")

    # decoder tail: uint8pos activations, int8 weight codes given directly, L < Lart.
    B, H, T, L, LART, DIM = 1, 2, 5, 13, 15, 19
    y = rng.normal(0.1, 1.0, size=(B, H, T, L)).astype(np.float32)
    codes = rng.integers(-127, 128, size=(H * LART, DIM)).astype(np.int8)
    w_scale = np.array([0.0125], dtype=np.float32)
    inp, outp = os.path.join(work, "dt_in.safetensors"), os.path.join(work, "dt_out.safetensors")
    save_file({"y": y, "weight_codes": codes, "weight_scale": w_scale}, inp)
    run(binary, "run", "decoder-tail", "--input", inp, "--output", outp, "--act-format", "uint8pos")
    got = load_file(outp)
    print("decoder-tail (uint8pos x int8 codes):")
    a_s = act_scale(y, "uint8pos")
    check("act_scale", close(got["act_scale"][0], a_s), f"{got['act_scale'][0]} vs {a_s}")
    yq = act_codes(y, got["act_scale"][0], "uint8pos")
    wq = codes.astype(np.int64).reshape(H, LART, DIM)[:, :L, :]
    acc = np.einsum("bhtl,hle->bte", yq, wq)[:, None, :, :]
    want = dequant(acc, w_scale[0], got["act_scale"][0])
    check("out bit-exact", got["out"].shape == want.shape and np.array_equal(got["out"], want))

    # quantize: int4 codes and the dequantized values.
    q = rng.normal(0, 2.0, size=(3, 7, 11)).astype(np.float32)
    inp, outp = os.path.join(work, "q_in.safetensors"), os.path.join(work, "q_out.safetensors")
    save_file({"x": q}, inp)
    run(binary, "run", "quantize", "--input", inp, "--output", outp, "--act-format", "int4")
    got = load_file(outp)
    print("quantize (int4):")
    s = got["scales"][0]
    check("scale", close(s, act_scale(q, "int4")))
    check("codes bit-exact", np.array_equal(got["codes"].astype(np.int64), act_codes(q, s, "int4")))
    check("out = codes * scale", np.array_equal(got["out"], got["codes"].astype(np.float32) * F(s)))

    if failures:
        print(f"python round-trip: {len(failures)} FAILED: {', '.join(failures)}")
        return 1
    print("python round-trip: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
