#!/usr/bin/env python3
"""Issues #4's and #5's "done when" lines, checked against `lowbit bench --json` files.

Usage: python3 benches/gpu/targets.py BENCH.json... (the files of `sweep.sh targets`, each
benched with `--peers`, so that every row carries its same-run peer ratios).

Each file holds one run's options (weights, out, relu), its backends' copy bandwidth and
ceilings, and rows (op, variant, M, us, % of copy bandwidth and of the compute ceiling, and
`peers`: peer time / ours). Rows are told apart by those options and by the kernel family in
the CUDA device name ("(Mma kernels)" / "(Dp4a kernels)"). Every target prints one line per
weight format and family that has rows for it: the value at each M against the bound and
"met" only if every M the issue names was measured and meets it. Missing rows or peers say so;
nothing is guessed.
"""
import json
import sys

LARGE = (512, 2048, 8192)
SMALL = (1, 16)  # the M <= 16 sizes (4 and 8 are shown where measured)


def load(paths):
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, ValueError) as e:
            print(f"targets.py: skipping {path}: {e}")
            continue
        bw = {b["backend"]: b.get("copy_bandwidth_gbps") for b in run.get("backends", [])}
        for r in run["rows"]:
            if r["backend"] != "cuda":
                continue
            fam = "dp4a" if "Dp4a kernels" in r["device"] else "mma"
            # `input`: the variant's input kind, its first word ("packed-t2-bf16-relu" is
            # packed input; the weights and output are the run's options).
            rows.append(dict(r, input=r["variant"].split("-")[0],
                             weights=run.get("weights", "i8x4"), out=run.get("out", "f32"),
                             relu=run.get("relu", False), family=fam, copy_gbps=bw.get("cuda"),
                             dhn=(run["d"], run["h"], run["n"])))
    return rows


def pick(rows, **want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def check(label, rows, ms, value, bound, unit="x", fmt="{:.2f}", lower_is_better=False):
    """One line per (weights, family) group of rows: value(row) at each M against bound."""
    groups = {}
    for r in rows:
        groups.setdefault((r["weights"], r["family"]), {})[r["m"]] = r
    if not groups:
        print(f"| {label} | - | no rows measured | - |")
        return
    for (w, fam), by_m in sorted(groups.items()):
        cells, ok = [], True
        shown = sorted(set(ms) | {m for m in by_m if m <= 16 and max(ms) <= 16})
        for m in shown:
            r = by_m.get(m)
            v = value(r) if r else None
            if v is None:
                if m in ms:
                    ok = False
                    cells.append(f"M={m}: -")
                continue
            good = v <= bound if lower_is_better else v >= bound
            if m in ms:
                ok &= good
            cells.append(f"M={m}: {fmt.format(v)}{unit}{'' if good else ' (no)'}")
        rel = "≤" if lower_is_better else "≥"
        print(f"| {label} | {w}, {fam} | {'; '.join(cells)} | {rel} {fmt.format(bound)}{unit}: "
              f"{'**met**' if ok else 'not met'} |")


def peer(name):
    return lambda r: r["peers"].get(name)


def weight_pct(r):
    """Weight bytes (one byte per i8x4 weight, 2 bits per ternary2 one) over time, as % of
    the copy bandwidth: issue #4's measure at M <= 16."""
    d, h, n = r["dhn"]
    wbytes = d * h * n * (1 if r["weights"] == "i8x4" else 0.25)
    if not r["copy_gbps"]:
        return None
    return 100.0 * wbytes / (r["us"] * 1e-6) / (r["copy_gbps"] * 1e9)


def byte_floor_ratio(r):
    p = r.get("pct_copy_bandwidth")
    return 100.0 / p if p else None


def main(paths):
    rows = load(paths)
    if not rows:
        sys.exit("targets.py: no CUDA rows in " + " ".join(paths))
    f32 = pick(rows, out="f32", relu=False)
    print("| target | weights, family | measured | bound |")
    print("|---|---|---|---|")
    # Issue #4 (dp4a family)
    dp = pick(f32, family="dp4a")
    for op in ("lowrank", "decoder-tail"):
        check(f"#4 dp4a {op} packed, % of the dp4a ceiling", pick(dp, op=op, input="packed"),
              (2048, 8192), lambda r: r.get("pct_compute_peak"), 75.0, unit="%", fmt="{:.0f}")
    check("#4 dp4a lowrank f32 in, vs eager_quant", pick(dp, op="lowrank", input="f32"),
          (2048, 8192), peer("eager_quant"), 1.0)
    for op in ("lowrank", "decoder-tail"):
        check(f"#4 {op} packed M ≤ 16, % copy bw on weight bytes",
              pick(f32, op=op, input="packed", weights="i8x4"), SMALL, weight_pct, 60.0,
              unit="%", fmt="{:.0f}")
    # Issue #5 (tensor-core family; M <= 16 either family)
    mma = pick(f32, family="mma")
    lr = pick(mma, op="lowrank", input="f32")
    check("#5 lowrank f32 in, vs compiled_quant", lr, LARGE, peer("compiled_quant"), 3.0)
    check("#5 lowrank f32 in, vs int_mm", lr, LARGE, peer("int_mm"), 1.15)
    check("#5 lowrank f32 in, time / byte floor", lr, LARGE, byte_floor_ratio, 1.25,
          lower_is_better=True)
    br = pick(rows, family="mma", op="lowrank", out="bf16", relu=True)
    for kind in ("packed", "f32"):
        check(f"#5 lowrank bf16 + ReLU ({kind} in), vs bf16_mm", pick(br, input=kind),
              LARGE, peer("bf16_mm"), 1.3)
    dec = pick(mma, op="decoder-tail", input="packed")
    for name in ("int_mm", "bf16_mm"):
        check(f"#5 decoder packed, vs {name} (M = 512, 2048)", dec, (512, 2048), peer(name), 1.5)
        check(f"#5 decoder packed, vs {name} (M = 8192)", dec, (8192,), peer(name), 1.2)
    for op in ("lowrank", "decoder-tail"):
        for out, relu in (("f32", False), ("bf16", True)):
            check(f"#5 {op} packed M ≤ 16 ({out}{' + ReLU' if relu else ''}), vs bf16_mm_graph",
                  pick(rows, op=op, input="packed", out=out, relu=relu), SMALL,
                  peer("bf16_mm_graph"), 2.5)
    cards = sorted({r["device"] for r in rows})
    bws = sorted({round(r["copy_gbps"]) for r in rows if r["copy_gbps"]})
    print(f"\ncards: {'; '.join(cards)}; copy bandwidth {', '.join(map(str, bws))} GB/s")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
