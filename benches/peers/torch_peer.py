#!/usr/bin/env python3
"""PyTorch peers of the CUDA benches, on the same BDH shapes and the same card.

For each op (lowrank: x[M, D=256] . W[256, H*N = 4*8192], heads side by side; decoder tail:
y[M, H*L = 4*8192] . W[32768, D=256]) and M in {1, 16, 512, 2048, 8192}, measures with
triton.testing.do_bench (CUDA events, median):
  int_mm        torch._int_mm (cuBLASLt int8 -> int32) with the weight column-major (cuBLASLt's
                fast "TN" int8 layout; also timed row-major as int_mm_rowmajor, which can be
                far slower); M <= 16 is padded to 32 rows (cuBLASLt's int8 path needs M > 16),
                the padding counted as no work
  bf16_mm       bf16 @ bf16 -> bf16
  eager_quant   f32 x -> absmean scale -> int8 codes -> torch._int_mm -> (acc * w_scale) * a_scale
  compiled_quant the same pipeline under torch.compile
For M <= 16 also, as lowbit bench times its own small-M rows: a CUDA graph of 8 products, one
per copy of the weights (so they come from DRAM, not L2), replayed 4 times back to back between
CUDA events, per product (bf16_mm_graph, int_mm_graph). The same graph of a one-element
in-place add gives the card's floor per dependent kernel (launch_floor_graph_ms): no small-M
kernel, ours or a peer's, can take less.
Throughput is counted as 2*M*K*N int (or flop) ops of the real M.

Usage: python3 torch_peer.py OUT.json   (also copies the JSON to $OUT/ when set;
TORCH_PEER_MS=1,16 times only those M)
"""
import json
import os
import sys

import torch
import triton.testing

EPS = 1e-8
# TORCH_PEER_MS=1,16 limits the M values (e.g. for a small-M run on a short lease).
MS = [int(v) for v in os.environ.get("TORCH_PEER_MS", "1,16,512,2048,8192").split(",")]
H, D, N = 4, 256, 8192


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


GRAPH_COPIES, GRAPH_REPLAYS = 8, 4


def bench_graph(fn, weights, samples=50):
    """Median time per call of fn(w) over a CUDA graph of one call per weight copy."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights:  # warm-up outside the capture
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w in weights:
            fn(w)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(GRAPH_REPLAYS):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / (GRAPH_REPLAYS * len(weights)))
    times.sort()
    return times[len(times) // 2]


def quant_pipeline(x, w_i8, w_scale):
    s = torch.clamp(2.0 * x.abs().mean(), min=EPS) / 127.0
    s = torch.clamp(s, min=EPS)
    q = torch.clamp(torch.round(x / s), -127, 127).to(torch.int8)
    acc = torch._int_mm(q, w_i8)
    return (acc.float() * w_scale) * s


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "torch_peer.json"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    compiled = torch.compile(quant_pipeline, dynamic=True)
    props = torch.cuda.get_device_properties(dev)
    res = {
        "card": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cases": [],
    }
    tiny = [torch.zeros(1, device=dev) for _ in range(GRAPH_COPIES)]
    res["launch_floor_graph_ms"] = bench_graph(lambda t: t.add_(1), tiny)
    print(f"TORCH-PEER launch_floor_graph_ms={res['launch_floor_graph_ms']:.4g}", flush=True)
    for op, k, n in [("lowrank", D, H * N), ("decoder_tail", H * N, D)]:
        w_rm = torch.randint(-1, 2, (k, n), dtype=torch.int8, device=dev)
        w_i8 = w_rm.t().contiguous().t()  # column-major [k, n]: cuBLASLt's int8 TN layout
        w_bf = w_rm.to(torch.bfloat16)
        for m in MS:
            mp = max(m, 32)  # cuBLASLt int8 needs M > 16
            x = torch.randn(mp, k, device=dev)
            if op == "decoder_tail":
                x = x.clamp(min=0)
            xq = torch.randint(-127, 128, (mp, k), dtype=torch.int8, device=dev)
            xb = x[:m].to(torch.bfloat16)
            ops = 2 * m * k * n
            case = {"op": op, "m": m, "k": k, "n": n, "int_ops": ops, "padded_m": mp}
            case["int_mm_ms"] = bench(lambda: torch._int_mm(xq, w_i8))
            case["int_mm_rowmajor_ms"] = bench(lambda: torch._int_mm(xq, w_rm))
            if m <= 16:
                bf_copies = [w_bf.clone() for _ in range(GRAPH_COPIES)]
                case["bf16_mm_graph_ms"] = bench_graph(lambda w: xb @ w, bf_copies)
                del bf_copies
                i8_copies = [w_i8.t().contiguous().t() for _ in range(GRAPH_COPIES)]
                case["int_mm_graph_ms"] = bench_graph(lambda w: torch._int_mm(xq, w), i8_copies)
                del i8_copies
            case["bf16_mm_ms"] = bench(lambda: xb @ w_bf)
            case["eager_quant_ms"] = bench(lambda: quant_pipeline(x, w_i8, 0.05))
            try:
                compiled(x, w_i8, 0.05)
                case["compiled_quant_ms"] = bench(lambda: compiled(x, w_i8, 0.05))
            except Exception as e:  # noqa: BLE001 - report, keep going
                case["compiled_quant_error"] = repr(e)[:300]
            for key in ["int_mm", "int_mm_rowmajor", "bf16_mm", "eager_quant", "compiled_quant",
                        "bf16_mm_graph", "int_mm_graph"]:
                if f"{key}_ms" in case:
                    case[f"{key}_tops"] = ops / (case[f"{key}_ms"] * 1e-3) / 1e12
            res["cases"].append(case)
            line = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in case.items()
            )
            print("TORCH-PEER", line, flush=True)
            del x, xq, xb
            torch.cuda.empty_cache()
    text = json.dumps(res, indent=1)
    with open(out_path, "w") as f:
        f.write(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "torch_peer.json"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
