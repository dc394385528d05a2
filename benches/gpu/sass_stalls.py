# Where a kernel's warps wait, per SASS instruction, from an ncu report's source page
# (BENCHMARKS.md, "The decoder's reduction under PDL, its epilogue, and a small-M spill").
# On the GPU machine:
#   ncu --set full -k regex:decoder_wgmma -s 2 -c 1 -o rep lowbit bench ... --iters 3 --no-graph
#   ncu --import rep.ncu-rep --page source --csv --print-source sass > rep.csv
# then anywhere: python3 benches/gpu/sass_stalls.py rep.csv [TOP] [BLOCK]
# Prints the stall reasons over all samples, the TOP instructions by samples (default 25), and
# the samples and executions per BLOCK consecutive instructions (default 64) with the opcodes
# there, which places a kernel's phases (prologue, mainloop, epilogue) in the listing.
import collections
import csv
import sys


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    block = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    hdr = rows[1]
    ix = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "(Not" not in h]
    recs = []
    for r in rows[2:]:
        if len(r) < len(hdr):
            continue
        try:
            samples = int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
            executed = int(r[ix["Instructions Executed"]] or 0)
        except ValueError:
            continue
        stalls = {h: int(r[ix[h]] or 0) for h in reasons}
        recs.append((int(r[ix["Address"]], 16), r[ix["Source"]], samples, executed, stalls))
    recs.sort()
    total = sum(x[2] for x in recs) or 1
    by_reason = collections.Counter()
    for x in recs:
        by_reason.update(x[4])
    print(f"{total} samples, {sum(x[3] for x in recs)} warp instructions executed")
    for h, v in by_reason.most_common(12):
        print(f"  {h:26s} {v:7d} {100 * v / total:5.1f} %")
    print(f"top {top} instructions (offset, samples, executed, SASS, main reasons)")
    base = recs[0][0] if recs else 0
    for a, src, s, ex, st in sorted(recs, key=lambda x: -x[2])[:top]:
        main_reasons = ", ".join(f"{k[6:]} {v}" for k, v in sorted(st.items(), key=lambda x: -x[1])[:2])
        print(f"  {a - base:#8x} {s:6d} {100 * s / total:5.1f} % {ex:8d}  {src[:60]:60s} {main_reasons}")
    print(f"per {block} instructions (first offset, samples, executed, opcodes)")
    for i in range(0, len(recs), block):
        chunk = recs[i : i + block]
        s = sum(x[2] for x in chunk)
        ex = sum(x[3] for x in chunk)
        ops = sorted({x[1].split()[1 if x[1].startswith("@") else 0].split(".")[0] for x in chunk if x[1].strip()})
        print(f"  {chunk[0][0] - base:#8x} {s:6d} {100 * s / total:5.1f} % {ex:9d}  {' '.join(ops)[:90]}")


if __name__ == "__main__":
    main()
