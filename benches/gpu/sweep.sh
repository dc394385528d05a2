#!/usr/bin/env bash
# Tuning sweep on the GPU machine, from the project root, out of .gpu-bundle/ (bundle.sh):
#   bash benches/gpu/sweep.sh [tests] [memcheck] [verify] [peers] [small] [dp4a] [tiles] [wgpu]
#                             [ncu] [ncusmall] [ncumma] [ncularge] [rings] [t2] [pdl] [shapes]
#                             [smallfinal] [wgmma] [final] [t2tests] [t2opts] [trace]
#                             [wgmmarate] [dramrate] [t2default] [reducew] [tmay] [targets]
#                             [smalltrace] [lrprologue] [smalldec] [graphtrace] [ncuatom]
#                             [sanitize] [ab] [smallprep] [prefetch] [chainfloor] [frozen] [frozendec] [frozenmin] [frozenpf] [dec2cw] [wide] [inlinescale] [gridscale] [t2gridscale] [wgather] [f32gap]
#                             (default: peers small dp4a wgpu ncu)
# tests: every test executable, 8 threads, LOWBIT_REQUIRE=cuda,wgpu (TEST_SHARD=I/N: only every
# N-th test of each, from the I-th, 0-based, so that the whole set can span N calls); peers:
# benches/peers/torch_peer.py; small: M <= 16 rows (CUDA graph replay and single launches);
# dp4a: the dp4a family on both projections, with the SM clock sampled; tiles: the tiled dp4a shapes of
# LOWBIT_CUDA_TILE_{LOWRANK,DECODER}; wgpu: the LOWBIT_WGPU_TILE shapes; ncu: warp-state
# sections of the dp4a lowrank kernel; ncusmall: the same (and stall samples) for the small-M
# kernels at M = 16 and 1; ncumma: the tensor-core kernels at M = 2048 and the small-M ones;
# rings: the low-rank mma weight rings of LOWBIT_CUDA_MMA_LOWRANK (criterion MMA-SUMMARY lines);
# ncularge: stall reasons, pipe and memory counters of the large-M projections (M = 2048);
# t2: ternary2 weights (--weights ternary2) at M = 1, 4, 16, 512, 2048; pdl: M <= 16 under each
# LOWBIT_CUDA_PDL mode (1 default, early, 0 plain launches), i8x4 and ternary2; shapes: M <= 16
# under LOWBIT_CUDA_SMALL grid shapes, with the weight-stream floor; smallfinal: every M <= 16
# row of the small-M table (graph replays, ternary2, bf16 + ReLU, single launches); wgmma: the
# low-rank epilogue's write floor (write_floor.py) and both ops at M = 512..8192 with LOWBIT_CUDA_WGMMA=1 / 0,
# the decoder under each LOWBIT_CUDA_WGMMA_ZCLUSTER; sanitize (or memcheck): every CUDA
# differential test in its own process under compute-sanitizer (SANITIZE_* below; memcheck
# also takes MEMCHECK_FILTERS, test names or parts of them); verify: lowbit verify --backend all; final: lowbit bench of every op, variant and M on
# CUDA (default family, then dp4a) and wgpu, with the peers (run peers first); t2tests: the
# tests of the decoder's ternary2 options, u8 fields (LOWBIT_CUDA_T2_FIELDS), the mbarrier
# ring (LOWBIT_CUDA_MBARRIER) and y by TMA on it (LOWBIT_CUDA_TMA); t2opts: two rounds of six
# combinations of them at M = 512..8192 (run peers first), then 64-row tiles
# (LOWBIT_CUDA_DECODER_ROWS=64) at M = 1024 / 2048 under four of them; trace: the
# timelines (LOWBIT_CUDA_TRACE=1; every block's stamps in $OUT/trace-N.csv) of the decoder at M = 512 / 2048 and the f32-input low-rank
# chain at 512; wgmmarate: benches/gpu/wgmma_rate.cu (nvcc), the int8 wgmma rate of the
# decoder's loop structure on data already in shared memory; dramrate: benches/gpu/dram_rate.cu
# (nvcc), the rate at which the decoder's CTAs can stream y into a ring by cp.async, bulk copies or
# TMA; t2default: three rounds of the
# ternary2 decoder at M = 512..8192 under the defaults (run peers first); reducew: the decoder's
# split-K sum 4 wide (LOWBIT_CUDA_REDUCE_W=4) against the default, two rounds at M = 512 / 2048;
# tmay: y by TMA (LOWBIT_CUDA_TMA=1, weights by cp.async) against the default, two rounds at
# M = 2048 / 8192 (run peers first); targets: every row that issues #4's and #5's "done when"
# lines name (both weight formats, f32 out and bf16 + ReLU, the default family and dp4a, M = 1,
# 16, 512, 2048, 8192; the decoder with packed input), then benches/gpu/targets.py's verdict on
# each line (run peers first); smalltrace: the
# timelines of the small-M tensor-core kernels (i8x4 weights, LOWBIT_CUDA_SMALL_MMA=1 so that
# M = 1 runs them too) at M = 1, 8, 16, single launches: where the decoder's time grows with M;
# lrprologue: the low-rank kernels' tests, then lowrank_wgmma's prologue (ternary2 weight words
# in flight with the first A tiles, the i8x4 gather in straight-line code after the first A
# tile, the device scale read right after the PDL wait; mma_prep_scale_a's barrier) against
# $b/bin/lowbit-base(.gz) (benches/gpu/base_build.sh REV, after bundle.sh), alternating, two
# rounds at M = 512 / 2048, both weight formats, f32 out (packed and f32 in) and bf16 + ReLU,
# then the new build's timelines at M = 512 (packed input; stamp 2: the prologue done).
# smalldec: the small-M tensor-core decoder's tests, then its CTA shapes with i8x4 weights
# (LOWBIT_CUDA_SMALL_DECODER: the default 1x8x64 in register batches of 64 and 32 words,
# 1x4x64 capped for 2 CTAs per SM in batches of 64 and 32, 1x16x32, 2x4x64 in batches of 32)
# under PDL after the wait, two rounds at M = 1, 2, 4, 8, 16 (LOWBIT_CUDA_SMALL_MMA=1, so M = 1
# runs it too).
# ncuatom: ncu's L2 request counts by kind (atomics, writes) and DRAM bytes of the small-M
# tensor-core kernels at M = 1 / 8 / 16 (decoder) and 8 / 16 (low-rank).
# smallprep: the small-M tensor-core decoder with f32 input packed once beforehand
# (LOWBIT_CUDA_SMALL_PREPACK=1) against the default, its test first.
# prefetch: the small-M kernels' PDL weight prefetch each way (LOWBIT_CUDA_PREFETCH, with and
# without evict_last), its test first. chainfloor: benches/gpu/chain_floor.cu, what a chain of
# dependent kernels that only read 8.39 MB of weights takes under each prefetch and launch
# order (nvcc). frozen: the small-M kernels with frozen weights (LOWBIT_CUDA_FROZEN_WEIGHTS=1)
# under each PDL mode, their tests first. frozendec: frozen weights, the small-M decoder's grid
# and CTA shapes (FROZEN_DEC: SMALL:SMALL_DECODER pairs instead of the default list).
# frozenmin: with frozen weights, M = 1..4 as routed against the dp4a family's kernels.
# frozenpf: with frozen weights, the L2 prefetch each way (LOWBIT_CUDA_PREFETCH, none too), its
# test first.
# dec2cw: the small-M decoder on 64-column CTAs (2x8x64: half of A's L2 traffic) against the
# default 1x8x64, with and without frozen weights; then, with frozen weights, the tensor-core
# decoder at M = 1 and ternary2 under the early PDL trigger. wide: with frozen weights, the
# decoder's 32- and 64-column CTAs forced at M = 8..16, and as chosen by M; their tests first.
# inlinescale: f32 input with a computed scale at M <= 16, the low-rank kernel working out the
# scale itself (LOWBIT_CUDA_SMALL_INLINE_SCALE=1) against the reduction kernel first, with and
# without frozen weights; its tests first. gridscale: the same for the dp4a small-M decoder
# (LOWBIT_CUDA_DECODER_GRID_SCALE, M = 1..8 on the dp4a family), its tests first. t2gridscale:
# the small-M tensor-core decoder's on ternary2 weights (LOWBIT_CUDA_SMALL_MMA_GRID_SCALE,
# M = 1..16, off and on, two rounds), its tests first. wgather: lowrank_wgmma's i8x4 weight
# tile gathered each way (LOWBIT_CUDA_WEIGHT_GATHER whole, halves; bf16 + ReLU at M = 512,
# 2048, 8192 and f32 out at 512, 2048, every input variant, two rounds; run peers first for the
# ratios), its test first, then the timelines at M = 2048 each way.
# f32gap: what the f32 input's packing launch adds to the low-rank projection at M = 2048 /
# 8192 (packed against f32 input, f32 out; the timelines of both, the two-kernel chain too;
# ncu's durations of each kernel alone).
# ab: the bundle's lowbit against bin/lowbit-base (base_build.sh), alternating (AB_SETS, AB_ROUNDS).
# graphtrace: the small-M tensor-core kernels' timelines in graph replay (LOWBIT_CUDA_TRACE=1:
# the replay's last kernel, in steady state under PDL; every block's stamps in
# $OUT/graphtrace-OP-W), i8x4 and ternary2 weights, M = 1, 16 (LOWBIT_CUDA_SMALL_MMA=1).
# Full logs and JSON go to $OUT (at the end, in logs-STEPS.tgz beside summary-STEPS.txt; files
# that were in $OUT before it started are left as they are); a summary table is printed last.
set -uo pipefail
b=.gpu-bundle
out=${OUT:-/tmp/out}; mkdir -p "$out"
# What is in $OUT already (the caller's files, such as a redirect of this script's own output,
# or an earlier sweep's) stays out of this sweep's archive.
mapfile -t pre < <(ls "$out")
export WGPU_BACKEND=vulkan RUST_BACKTRACE=1
for deb in "$b"/debs/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig
find "$b" -name '*.gz' -exec gunzip -f {} + 2>/dev/null
chmod +x "$b"/tests/* "$b"/bench/* "$b"/bin/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader
L=$b/bin/lowbit
what=${*:-peers small dp4a wgpu ncu}
if [[ " $what " == *" tests "* ]]; then
  for t in "$b"/tests/*; do
    [ -x "$t" ] || continue
    names=()
    if [ -n "${TEST_SHARD:-}" ]; then  # I/N: every N-th test of each executable from the I-th
      mapfile -t names < <("$t" --list 2>/dev/null | sed -n 's/: test$//p' \
        | awk -v i="${TEST_SHARD%/*}" -v n="${TEST_SHARD#*/}" '(NR - 1) % n == i')
      [ ${#names[@]} -gt 0 ] || continue
      names=(--exact "${names[@]}")
    fi
    echo "=== test $(basename "$t")${TEST_SHARD:+ (shard $TEST_SHARD)}"
    LOWBIT_BIN=$PWD/$L LOWBIT_REQUIRE=cuda,wgpu "$t" --test-threads=8 "${names[@]}" \
      > "$out/test-$(basename "$t").log" 2>&1
    echo "exit $?"; grep -E "^test result|FAILED|panicked|SKIPPED" "$out/test-$(basename "$t").log" | head -20
  done
fi
has() { [[ " $what " == *" $1 "* ]]; }
if has sanitize || has memcheck; then
  # Every CUDA test of the differential executable (names matching SANITIZE_MATCH, default
  # "cuda"; under the step name memcheck, MEMCHECK_FILTERS' names joined by |, if set), each in
  # its own process under compute-sanitizer --tool SANITIZE_TOOL (default memcheck),
  # SANITIZE_JOBS (8) at once, started until SANITIZE_BUDGET s (500) have passed and cut off
  # there; names listed in SANITIZE_DONE (one per line: an earlier call's) are skipped.
  # One line per test: its exit status and the sanitizer's error summary. Tests matching
  # SANITIZE_ALONE run first, one at a time: under racecheck (the default there) the small-M
  # tensor-core tests reach 127 GB RSS alone on the 128 GB H100 machine, and beside other
  # jobs they, narrow partials and split clusters were killed by the OOM killer (rc=9).
  d=$(ls "$b"/tests/differential-* | head -1)
  tool=${SANITIZE_TOOL:-memcheck}
  has sanitize || tool=memcheck
  match=${SANITIZE_MATCH:-cuda}
  if has memcheck && [ -n "${MEMCHECK_FILTERS:-}" ] && [ -z "${SANITIZE_MATCH:-}" ]; then
    match=$(echo $MEMCHECK_FILTERS | tr ' ' '|')
  fi
  alone_default=; [ "$tool" = racecheck ] && alone_default='small_m|decoder_narrow_partials|split_clusters'
  alone=${SANITIZE_ALONE-$alone_default}
  dir=$out/sanitize-$tool
  mkdir -p "$dir"
  "$d" --list 2>/dev/null | sed -n 's/: test$//p' | grep -E "$match" \
    | grep -vxF -f <(cat "${SANITIZE_DONE:-/dev/null}" 2>/dev/null; echo '@none@') \
    | awk '/cuda_mma/ {print; next} {rest[n++] = $0} END {for (i = 0; i < n; i++) print rest[i]}' \
    > "$dir/todo.txt"  # the tensor-core tests (the longest) first
  if [ -n "$alone" ]; then
    grep -E "$alone" "$dir/todo.txt" > "$dir/alone.txt"
    grep -vE "$alone" "$dir/todo.txt" > "$dir/shared.txt"
  else
    : > "$dir/alone.txt"; cp "$dir/todo.txt" "$dir/shared.txt"
  fi
  echo "=== sanitize ($tool): $(wc -l < "$dir/todo.txt") tests, $(wc -l < "$dir/alone.txt") alone"
  export d tool dir deadline=$(( $(date +%s) + ${SANITIZE_BUDGET:-500} ))
  one_test='
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -le 5 ]; then echo "{} not-run"; exit 0; fi
    log="$dir/$(echo {} | tr ":" "_").log"
    LOWBIT_REQUIRE=cuda timeout "$left" compute-sanitizer --tool "$tool" --error-exitcode 99 \
      "$d" --exact "{}" --test-threads=1 > "$log" 2>&1
    rc=$?
    echo "{} rc=$rc $(grep -E "^test result" "$log" | sed -E "s/^test result: ([A-Za-z]+)\..*finished in /\1, /") | $(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -1 | sed "s/^=* *//")"
  '
  { xargs -P 1 -I{} bash -c "$one_test" < "$dir/alone.txt"
    xargs -P "${SANITIZE_JOBS:-8}" -I{} bash -c "$one_test" < "$dir/shared.txt"; } \
    | sort | tee "$out/sanitize-$tool.txt"
  echo "sanitize ($tool): $(grep -c " rc=0 " "$out/sanitize-$tool.txt") clean, $(grep -vc " rc=0 " "$out/sanitize-$tool.txt") not"
fi
if has verify; then
  "$L" verify --backend all > "$out/verify.log" 2>&1; echo "verify exit $?"; tail -n 4 "$out/verify.log"
fi
peers=()
# Peers of an earlier run of the same card type, when carried along (.gpu-bundle/peers/prev.json).
[ -f "$b/peers/prev.json" ] && peers=(--peers "$b/peers/prev.json")
if has peers; then
  python3 "$b/peers/torch_peer.py" "$out/peers.json" > "$out/peers.log" 2>&1 && peers=(--peers "$out/peers.json")
  tail -n 12 "$out/peers.log"
fi
# One summary and one archive per invocation, named by its steps, so that several sweeps in
# one device call keep each other's output.
tag=$(echo $what | tr ' ' '-')
sum=$out/summary-$tag.txt; : > "$sum"
bench() {  # label, then lowbit bench args
  local label=$1; shift
  echo "=== $label" | tee -a "$sum"
  "${BIN:-$L}" bench "$@" "${peers[@]}" 2>>"$out/bench.err" | tee -a "$out/bench.log" \
    | grep -E "^(cuda|wgpu) |^cuda: weight-stream" | cut -c1-230 | tee -a "$sum"
}
trace_bench() {  # label, $out subfolder for every block's stamps ('' for $out), then lowbit bench args
  local label=$1 dir=$out${2:+/$2}; shift 2
  echo "=== $label" | tee -a "$sum"
  mkdir -p "$dir"
  LOWBIT_CUDA_TRACE=1 LOWBIT_TRACE_CSV=$dir "$L" bench "$@" 2>&1 | tee -a "$out/trace.log" \
    | grep -E "^cuda |trace|^  " | cut -c1-300 | tee -a "$sum"
}
step_tests() {  # label, time limit (s), threads, then test name filters: those differential tests
  local label=$1 limit=$2 threads=$3 d; shift 3
  d=$(ls "$b"/tests/differential-* | head -1)
  LOWBIT_REQUIRE=cuda timeout "$limit" "$d" --test-threads="$threads" "$@" > "$out/test-$label.log" 2>&1
  echo "$label tests exit $?" | tee -a "$sum"
  grep -E "^test |^test result|panicked|FAILED" "$out/test-$label.log" | head -20 | tee -a "$sum"
}
if has small; then
  bench "cuda small M, graph" --backend cuda --op lowrank,decoder-tail --m 1,4,8,16 --json "$out/small_graph.json"
  bench "cuda small M, single launch" --backend cuda --op lowrank,decoder-tail --m 1,16 --no-graph
  LOWBIT_CUDA_KERNELS=dp4a bench "cuda small M, dp4a, graph" --backend cuda --op lowrank,decoder-tail --m 1,4,8,16
fi
if has t2; then
  bench "cuda ternary2 weights" --backend cuda --op lowrank,decoder-tail --m 1,4,16,512,2048 --weights ternary2 --json "$out/t2.json"
fi
if has t2tests; then
  step_tests t2opts 400 4 cuda_mma::decoder_t2 cuda_mma::decoder_mbarrier_ring \
    cuda_mma::decoder_y_by_tma cuda_mma::decoder_narrow
fi
if has t2opts; then
  # fmt: T2_FIELDS, MBARRIER, TMA
  for round in 1 2; do
    for fmt in 000 100 010 110 011 111; do
      LOWBIT_CUDA_T2_FIELDS=${fmt:0:1} LOWBIT_CUDA_MBARRIER=${fmt:1:1} LOWBIT_CUDA_TMA=${fmt:2:1} \
        bench "decoder ternary2, T2_FIELDS=${fmt:0:1} MBARRIER=${fmt:1:1} TMA=${fmt:2:1}, round $round" \
        --backend cuda --op decoder-tail --variant packed --m 512,2048,8192 --weights ternary2
    done
  done
  # 64-row tiles where 128 are the default (fewer splits, longer rings), each ring
  for fmt in 000 010 011 111; do
    LOWBIT_CUDA_DECODER_ROWS=64 LOWBIT_CUDA_T2_FIELDS=${fmt:0:1} LOWBIT_CUDA_MBARRIER=${fmt:1:1} \
      LOWBIT_CUDA_TMA=${fmt:2:1} \
      bench "decoder ternary2, 64-row tiles, T2_FIELDS=${fmt:0:1} MBARRIER=${fmt:1:1} TMA=${fmt:2:1}" \
      --backend cuda --op decoder-tail --variant packed --m 1024,2048 --weights ternary2
  done
fi
if has t2default; then
  # the defaults (u8 fields; the mbarrier ring on 128-row tiles only), three rounds
  for round in 1 2 3; do
    bench "decoder ternary2, defaults, round $round" \
      --backend cuda --op decoder-tail --variant packed --m 512,2048,8192 --weights ternary2
  done
fi
if has tmay; then
  for round in 1 2; do
    for tma in 1 0; do
      LOWBIT_CUDA_TMA=$tma bench "decoder ternary2, LOWBIT_CUDA_TMA=$tma, round $round" \
        --backend cuda --op decoder-tail --variant packed --m 2048,8192 --weights ternary2
    done
  done
fi
if has smalldec; then
  step_tests smalldec 120 8 small_mma_decoder small_m_grid cuda_mma::routing
  for round in 1 2; do
    for cfg in 1x8x64 1x8x64x1x32 1x4x64x2 1x4x64x2x32 1x16x32 2x4x64x1x32; do
      LOWBIT_CUDA_SMALL_MMA=1 LOWBIT_CUDA_SMALL_DECODER=$cfg \
        bench "decoder i8x4 small M, CTA $cfg, round $round" --backend cuda \
        --op decoder-tail --variant packed --m 1,2,4,8,16
    done
  done
fi
if has lrprologue; then
  step_tests lrprologue 300 8 cuda_mma::lowrank cuda_mma::ternary2_lowrank \
    cuda_mma::runs_are_bit_identical
  [ -x "$b/bin/lowbit-base" ] || echo "no $b/bin/lowbit-base: the new build only" | tee -a "$sum"
  for round in 1 2; do
    for which in base new; do
      bin=$L; [ $which = base ] && bin=$b/bin/lowbit-base
      [ -x "$bin" ] || continue
      for w in ternary2 i8x4; do
        BIN=$bin bench "lowrank $w, f32 out, $which build, round $round" --backend cuda --op lowrank \
          --variant all --m 512,2048 --weights $w
        BIN=$bin bench "lowrank $w, bf16 + ReLU, $which build, round $round" --backend cuda \
          --op lowrank --variant packed --m 512,2048 --weights $w --out bf16 --relu
      done
    done
  done
  for w in ternary2 i8x4; do  # s2: the weight tile and first A tiles in smem (new build)
    trace_bench "trace lowrank packed M=512, $w" lrtrace-$w --backend cuda --op lowrank \
      --variant packed --m 512 --weights $w
  done
fi
if has ab; then
  # The bundle's build against $b/bin/lowbit-base (benches/gpu/base_build.sh), alternating base
  # and new, AB_ROUNDS (2) rounds of each `lowbit bench` argument set in AB_SETS (separated by
  # ";"; default: the small-M graph replays of both ops and weight formats, f32 out).
  [ -x "$b/bin/lowbit-base" ] || echo "no $b/bin/lowbit-base: the new build only" | tee -a "$sum"
  IFS=';' read -ra sets <<< "${AB_SETS:---op lowrank,decoder-tail --m 1,16 --weights i8x4;--op lowrank,decoder-tail --m 1,16 --weights ternary2}"
  for round in $(seq 1 "${AB_ROUNDS:-2}"); do
    for which in base new; do
      bin=$L; [ $which = base ] && bin=$b/bin/lowbit-base
      [ -x "$bin" ] || continue
      for set in "${sets[@]}"; do
        BIN=$bin bench "ab: $set, $which build, round $round" --backend cuda $set
      done
    done
  done
fi
if has smallprep; then
  # f32 input to the small-M tensor-core decoder packed once beforehand
  # (LOWBIT_CUDA_SMALL_PREPACK=1) against each CTA quantizing its own slice (0): the test, then
  # two rounds at M = 1..16, i8x4 (LOWBIT_CUDA_SMALL_MMA=1, so M < 4 runs the tensor-core
  # kernel too) and ternary2.
  step_tests smallprep 200 2 small_decoder_f32_packing_each_way
  for round in 1 2; do
    for v in 0 1; do
      for w in i8x4 ternary2; do
        LOWBIT_CUDA_SMALL_MMA=1 LOWBIT_CUDA_SMALL_PREPACK=$v bench \
          "decoder f32 in, $w, SMALL_PREPACK=$v, round $round" --backend cuda --op decoder-tail \
          --variant f32 --m 1,2,4,8,16 --weights $w
      done
    done
  done
fi
if has prefetch; then
  # The small-M kernels' PDL weight prefetch (LOWBIT_CUDA_PREFETCH) each way, with and without
  # the L2 evict_last priority: the test, then two rounds of both ops at M = 1..16, packed
  # input, f32 out, both weight formats.
  step_tests prefetch 200 4 small_m_weight_prefetch_each_way
  for round in 1 2; do
    for pf in auto lines lines-last bulk bulk-last; do
      for w in i8x4 ternary2; do
        LOWBIT_CUDA_PREFETCH=$pf bench "prefetch $pf, $w, round $round" --backend cuda \
          --op lowrank,decoder-tail --variant packed --m 1,2,4,8,16 --weights $w
      done
    done
  done
fi
if has frozen; then
  # Frozen weights (LOWBIT_CUDA_FROZEN_WEIGHTS=1: the small-M kernels load their first weights
  # before the PDL wait) under each PDL mode: the tests, then two rounds of both ops at
  # M = 1..16, packed input, f32 out, both weight formats.
  step_tests frozen 300 4 small_m_frozen_weights small_m_chain_back_to_back
  for round in 1 2; do
    for cfg in 0,1 1,1 0,early 1,early; do
      fz=${cfg%,*} pdl=${cfg#*,}
      for w in i8x4 ternary2; do
        LOWBIT_CUDA_FROZEN_WEIGHTS=$fz LOWBIT_CUDA_PDL=$pdl bench \
          "frozen $fz, pdl $pdl, $w, round $round" --backend cuda --op lowrank,decoder-tail \
          --variant packed --m 1,2,4,8,16 --weights $w
      done
    done
  done
fi
if has frozendec; then
  # Frozen weights (the small-M kernels with i8x4 weights then also take the early PDL
  # trigger): the decoder's grid and CTA shapes (LOWBIT_CUDA_SMALL's blocks per SM,
  # LOWBIT_CUDA_SMALL_DECODER), two rounds at M = 1..16, packed, f32 out; the low-rank default.
  for round in 1 2; do
    LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench "frozen, low-rank default, round $round" --backend cuda \
      --op lowrank --variant packed --m 1,4,8,16
    for cfg in ${FROZEN_DEC:-2x2x4:1x8x64 2x1x4:1x8x64 2x2x4:1x16x32 2x2x4:1x16x32x2 \
               2x1x4:1x8x64x2x32 2x1x4:1x4x64x2 2x4x4:1x8x64x1x32}; do
      sm=${cfg%:*} dec=${cfg#*:}
      LOWBIT_CUDA_FROZEN_WEIGHTS=1 LOWBIT_CUDA_SMALL=$sm LOWBIT_CUDA_SMALL_DECODER=$dec bench \
        "frozen, decoder SMALL=$sm SMALL_DECODER=$dec, round $round" --backend cuda \
        --op decoder-tail --variant packed --m 1,4,8,16
    done
  done
fi
if has frozenmin; then
  # With frozen weights the tensor-core small-M kernels take M < 4 (the low-rank projection
  # and the decoder from M = 1): as routed against the dp4a family, two rounds, packed.
  for round in 1 2; do
    for fam in mma dp4a; do
      LOWBIT_CUDA_KERNELS=$fam LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench \
        "frozen, $fam, M <= 4, round $round" --backend cuda --op lowrank,decoder-tail \
        --variant packed --m 1,2,3,4
    done
  done
fi
if has frozenpf; then
  # Frozen weights load the first register batch before the wait, which the L2 prefetch
  # issued just before it duplicates: each prefetch mode, none too, two rounds, packed.
  step_tests frozenpf 300 4 small_m_weight_prefetch_each_way
  for round in 1 2; do
    for pf in auto none lines lines-last; do
      for w in i8x4 ternary2; do
        LOWBIT_CUDA_PREFETCH=$pf LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench \
          "frozen, PREFETCH=$pf, $w, round $round" --backend cuda --op lowrank,decoder-tail \
          --variant packed --m 1,2,4,8,16 --weights $w
      done
    done
  done
fi
if has dec2cw; then
  for round in 1 2; do
    for cfg in 0:2x2x4:1x8x64 0:2x2x4:2x8x64 0:2x1x4:2x8x64 1:2x2x4:1x8x64 1:2x2x4:2x8x64 \
               1:2x4x4:2x8x64; do
      fz=${cfg%%:*} rest=${cfg#*:}; sm=${rest%:*} dec=${rest#*:}
      LOWBIT_CUDA_FROZEN_WEIGHTS=$fz LOWBIT_CUDA_SMALL=$sm LOWBIT_CUDA_SMALL_DECODER=$dec bench \
        "decoder i8x4, frozen $fz, SMALL=$sm SMALL_DECODER=$dec, round $round" --backend cuda \
        --op decoder-tail --variant packed --m 1,4,8,16
    done
    LOWBIT_CUDA_SMALL_MMA=1 LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench \
      "decoder i8x4, frozen, tensor cores at M = 1, round $round" --backend cuda \
      --op decoder-tail --variant packed --m 1
    LOWBIT_CUDA_PDL=early LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench \
      "ternary2, frozen, PDL=early, round $round" --backend cuda --op lowrank,decoder-tail \
      --variant packed --m 1,4,8,16 --weights ternary2
    LOWBIT_CUDA_FROZEN_WEIGHTS=1 bench "ternary2, frozen, round $round" --backend cuda \
      --op lowrank,decoder-tail --variant packed --m 1,4,8,16 --weights ternary2
  done
fi
if has wide; then
  step_tests wide 300 8 small_m_frozen_weights small_mma_decoder_shapes_are_bit_exact \
    small_m_chain_back_to_back
  for round in 1 2; do
    for dec in 1x8x64 2x8x64 ""; do
      LOWBIT_CUDA_FROZEN_WEIGHTS=1 LOWBIT_CUDA_SMALL_DECODER=$dec bench \
        "decoder i8x4, frozen, SMALL_DECODER=${dec:-by M}, round $round" --backend cuda \
        --op decoder-tail --variant packed --m 1,8,9,10,11,12,13,14,15,16
    done
  done
fi
if has inlinescale; then
  step_tests inlinescale 300 8 small_lowrank_inline_scale raw_pointer_entry_points
  for round in 1 2; do
    for fz in 0 1; do
      for il in 0 1; do
        for w in i8x4 ternary2; do
          LOWBIT_CUDA_SMALL_INLINE_SCALE=$il LOWBIT_CUDA_FROZEN_WEIGHTS=$fz bench \
            "low-rank f32 in, $w, inline scale $il, frozen $fz, round $round" --backend cuda \
            --op lowrank --variant f32 --m 1,4,8,16 --weights $w
        done
      done
    done
  done
fi
if has gridscale; then
  step_tests gridscale 300 8 small_decoder_grid_scale_same_bits graph_replays
  for round in 1 2; do
    for fz in 0 1; do
      for gs in 0 1; do
        # The dp4a family: by default f32 input takes the tensor cores from M = 5.
        LOWBIT_CUDA_KERNELS=dp4a LOWBIT_CUDA_DECODER_GRID_SCALE=$gs LOWBIT_CUDA_FROZEN_WEIGHTS=$fz bench \
          "decoder f32 in, i8x4, dp4a, grid scale $gs, frozen $fz, round $round" --backend cuda \
          --op decoder-tail --variant f32 --m 1,2,4,8
      done
    done
  done
fi
if has t2gridscale; then
  step_tests t2gridscale 300 8 small_mma_decoder_grid_scale_same_bits graph_replays
  for round in 1 2; do
    for gs in 0 1; do
      LOWBIT_CUDA_SMALL_MMA_GRID_SCALE=$gs bench \
        "decoder f32 in, ternary2, grid scale $gs, round $round" --backend cuda \
        --op decoder-tail --variant f32 --weights ternary2 --m 1,2,4,8,16
    done
  done
fi
if has wgather; then
  step_tests wgather 300 8 lowrank_wgmma_weight_gather
  for round in 1 2; do
    for g in whole halves; do
      LOWBIT_CUDA_WEIGHT_GATHER=$g bench "lowrank i8x4, bf16 + ReLU, $g gather, round $round" \
        --backend cuda --op lowrank --variant all --m 512,2048,8192 --out bf16 --relu
      LOWBIT_CUDA_WEIGHT_GATHER=$g bench "lowrank i8x4, f32 out, $g gather, round $round" \
        --backend cuda --op lowrank --variant all --m 512,2048
    done
  done
  for g in whole halves; do  # stamp 2: the first mma may start
    LOWBIT_CUDA_WEIGHT_GATHER=$g trace_bench "trace lowrank packed bf16 + ReLU M=2048, $g gather" \
      wgtrace-$g --backend cuda --op lowrank --variant packed --m 2048 --out bf16 --relu
  done
fi
if has f32gap; then
  # Where the f32 input's packing launch costs the low-rank projection its time at large M:
  # packed against f32 input (f32 out, ternary2 and i8x4), then each one's timeline (packing
  # launch and projection stamps) at 2048 / 8192, the two-kernel chain (FUSED_SCALE=0) too, and
  # ncu's durations of each kernel alone.
  for w in ternary2 i8x4; do
    bench "lowrank $w, f32 out, packed and f32 in" --backend cuda --op lowrank --variant all \
      --m 2048,8192 --weights $w
  done
  LOWBIT_CUDA_FUSED_SCALE=0 bench "lowrank ternary2, f32 in, two-kernel chain" --backend cuda \
    --op lowrank --variant f32 --m 2048,8192 --weights ternary2
  LOWBIT_CUDA_PDL=0 bench "lowrank ternary2, f32 in, no PDL" --backend cuda --op lowrank \
    --variant f32 --m 2048,8192 --weights ternary2
  for spec in "packed 2048 1" "f32 2048 1" "packed 8192 1" "f32 8192 1" "f32 8192 0"; do
    set -- $spec
    LOWBIT_CUDA_FUSED_SCALE=$3 trace_bench "trace lowrank ternary2 $1 M=$2 fused_scale=$3" \
      f32trace-$1-$2-$3 --backend cuda --op lowrank --variant $1 --m $2 --weights ternary2
  done
  command -v ncu >/dev/null || export PATH="$PATH:$(ls -d /usr/local/cuda*/bin | head -1)"
  for m in 2048 8192; do
    echo "=== ncu lowrank ternary2 f32 M=$m" | tee -a "$sum"
    timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      -k regex:'mma_prep|absmean|lowrank_wgmma' -c 9 "$L" bench --backend cuda --op lowrank \
      --variant f32 --m $m --weights ternary2 --iters 3 > "$out/ncu-f32-$m.log" 2>&1
    grep -E "^  [a-z_]+.*\(|gpu__time_duration|dram__bytes" "$out/ncu-f32-$m.log" | head -30 | tee -a "$sum"
  done
fi
if has chainfloor; then
  # benches/gpu/chain_floor.cu (built here by nvcc, or carried as $b/bin/chain_floor).
  cf=$b/bin/chain_floor
  if [ ! -x "$cf" ]; then
    command -v nvcc >/dev/null || export PATH="$PATH:$(ls -d /usr/local/cuda*/bin | head -1)"
    nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/chain_floor \
      benches/gpu/chain_floor.cu > "$out/chain_floor.build" 2>&1 || tail -n 20 "$out/chain_floor.build"
    cf=/tmp/chain_floor
  fi
  [ -x "$cf" ] && "$cf" 2>&1 | tee -a "$sum"
fi
if has graphtrace; then
  for w in i8x4 ternary2; do
    for op in decoder-tail lowrank; do
      LOWBIT_CUDA_SMALL_MMA=1 trace_bench "graph trace $op, $w" graphtrace-$op-$w \
        --backend cuda --op $op --variant packed --m 1,16 --weights $w
    done
  done
fi
if has smalltrace; then
  for op in decoder-tail lowrank; do
    LOWBIT_CUDA_SMALL_MMA=1 trace_bench "trace $op, small M, tensor cores" smalltrace-$op \
      --backend cuda --op $op --variant packed --m 1,8,16 --no-graph
  done
fi
if has reducew; then
  # the decoder's split-K sum 4 wide against the default (8 wide at M = 2048), two rounds
  for round in 1 2; do
    for w in 4 ""; do
      LOWBIT_CUDA_REDUCE_W=$w bench "decoder ternary2, LOWBIT_CUDA_REDUCE_W=${w:-default}, round $round" \
        --backend cuda --op decoder-tail --variant packed --m 512,2048 --weights ternary2
    done
  done
fi
if has trace; then
  for spec in "decoder-tail packed 512,2048" "lowrank f32 512"; do
    set -- $spec
    trace_bench "trace $1 $2 M=$3" '' --backend cuda --op "$1" --variant "$2" --m "$3" \
      --weights ternary2
  done
fi
if has wgmmarate; then
  command -v nvcc >/dev/null || export PATH="$PATH:$(ls -d /usr/local/cuda*/bin | head -1)"
  nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/wgmma_rate \
    benches/gpu/wgmma_rate.cu > "$out/wgmma_rate.build" 2>&1 || tail -n 20 "$out/wgmma_rate.build"
  grep -h "serialized" "$out/wgmma_rate.build" | tee -a "$sum"  # C7512: that variant's rate is not the loop's
  [ -x /tmp/wgmma_rate ] && /tmp/wgmma_rate 2>&1 | tee -a "$sum"
fi
if has dramrate; then
  command -v nvcc >/dev/null || export PATH="$PATH:$(ls -d /usr/local/cuda*/bin | head -1)"
  nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/dram_rate \
    benches/gpu/dram_rate.cu > "$out/dram_rate.build" 2>&1 || tail -n 20 "$out/dram_rate.build"
  [ -x /tmp/dram_rate ] && /tmp/dram_rate 2>&1 | tee -a "$sum"
fi
if has pdl; then
  for mode in 1 early 0; do
    LOWBIT_CUDA_PDL=$mode bench "small M, LOWBIT_CUDA_PDL=$mode" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,4,8,16
    LOWBIT_CUDA_PDL=$mode bench "ternary2, LOWBIT_CUDA_PDL=$mode" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,16 --weights ternary2
  done
fi
if has wgmma; then  # BENCHMARKS.md's warpgroup-mma table: write floor, then wgmma and mma.sync rows (run peers first)
  python3 benches/gpu/write_floor.py 2>&1 | tee -a "$sum"
  bench "large M, f32 out" --backend cuda --op lowrank,decoder-tail --variant all --m 512,2048,8192 --json "$out/large_f32.json"
  bench "large M, bf16 + ReLU" --backend cuda --op lowrank,decoder-tail --variant all --m 512,2048,8192 --out bf16 --relu --json "$out/large_bf16.json"
  bench "large M, bf16 out" --backend cuda --op decoder-tail --variant all --m 512,2048,8192 --out bf16
  LOWBIT_CUDA_WGMMA=0 bench "large M, mma.sync kernels, f32 out" --backend cuda --op lowrank,decoder-tail --variant all --m 512,2048,8192
  LOWBIT_CUDA_WGMMA=0 bench "large M, mma.sync low-rank, bf16 + ReLU" --backend cuda --op lowrank --variant all --m 512,2048,8192 --out bf16 --relu
  for z in 1 2 4 8; do
    LOWBIT_CUDA_WGMMA_ZCLUSTER=$z bench "decoder, split clusters up to $z" --backend cuda --op decoder-tail --variant packed --m 512,2048,8192
  done
fi
if has smallfinal; then  # every M <= 16 row of BENCHMARKS.md's small-M table (run peers first)
  bench "small M, graph" --backend cuda --op lowrank,decoder-tail --m 1,4,8,16 --json "$out/small_graph.json"
  bench "small M, ternary2" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,4,16 --weights ternary2
  bench "small M, bf16 + ReLU" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,16 --out bf16 --relu
  bench "small M, ternary2, bf16 + ReLU" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,16 --weights ternary2 --out bf16 --relu
  LOWBIT_CUDA_SMALL=4x2x2 bench "small M, previous grid shape" --backend cuda --op lowrank --m 1
  bench "small M, single launch" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,16 --no-graph
fi
if has shapes; then  # small-M grid shapes (LOWBIT_CUDA_SMALL=CWxBxM1), with the weight-stream floor
  for s in ${SMALL_SHAPES:-2x2x4 4x2x2 2x4x4 4x4x4 8x1x2}; do
    LOWBIT_CUDA_SMALL=$s bench "small M, LOWBIT_CUDA_SMALL=$s" --backend cuda --op lowrank,decoder-tail --variant packed --m 1,4,8,16
  done
  for s in ${SMALL_SHAPES_T2:-2x2x4 2x4x4}; do
    LOWBIT_CUDA_SMALL=$s bench "ternary2, LOWBIT_CUDA_SMALL=$s" --backend cuda --op decoder-tail --variant packed --m 1,16 --weights ternary2
  done
fi
if has dp4a; then
  nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader -lms 100 > "$out/clocks.txt" 2>&1 &
  smi=$!
  LOWBIT_CUDA_KERNELS=dp4a bench "dp4a all" --backend cuda --op lowrank,decoder-tail --m 1,16,512,2048,8192 --json "$out/dp4a.json"
  kill $smi
  sort "$out/clocks.txt" | uniq -c | sort -rn | head -8
fi
if has tiles; then
  for t in 128x128x8/2 64x256x8/2 256x64x8/2 128x64x4/3 128x64x4/2 64x128x4/3; do
    LOWBIT_CUDA_KERNELS=dp4a LOWBIT_CUDA_TILE_LOWRANK=$t LOWBIT_CUDA_TILE_DECODER=$t \
      bench "dp4a tile $t" --backend cuda --op lowrank,decoder-tail --variant packed --m 2048,8192
  done
fi
if has rings; then
  for r in 32x2 32x3 32x4 64x2; do
    echo "=== ring $r" | tee -a "$sum"
    LOWBIT_CUDA_MMA_LOWRANK=$r "$b"/bench/lowrank-* --bench cuda_mma 2>&1 | grep -E '^MMA-SUMMARY' \
      | sed 's/cuda_mma.lowrank.//; s/floor_us.*//' | tee -a "$sum"
  done
fi
if has wgpu; then
  for t in 16x8x16 16x8x8 16x8x32 16x4x16 32x4x16 8x8x16 16x16x16; do
    LOWBIT_WGPU_TILE=$t bench "wgpu tile $t" --backend wgpu --op lowrank,decoder-tail --variant packed --m 512,2048,8192
  done
fi
if has ncu && command -v ncu >/dev/null; then
  LOWBIT_CUDA_KERNELS=dp4a timeout 120 ncu --section WarpStateStats --section SchedulerStats \
    --section SpeedOfLight --section Occupancy -k regex:lowrank_packed -c 1 \
    "$L" bench --backend cuda --op lowrank --variant packed --m 2048 --iters 1 > "$out/ncu.txt" 2>&1
  grep -E "Duration|Throughput|Stall|Issue|Eligible|Active Warps|Achieved|Registers|No Eligible|One or More" "$out/ncu.txt" | head -40
fi
if has ncumma && command -v ncu >/dev/null; then
  for spec in "lowrank_mma lowrank 2048 i8x4" "decoder_tail_mma decoder-tail 2048 i8x4" \
      "lowrank_mma_small lowrank 1 ternary2" "decoder_mma_small decoder-tail 1 ternary2" \
      "decoder_mma_small decoder-tail 16 i8x4" "decoder_packed decoder-tail 1 i8x4"; do
    set -- $spec
    echo "=== ncu $1 M=$3"
    fam=; [ "$1" = decoder_packed ] && fam=dp4a
    LOWBIT_CUDA_KERNELS=$fam timeout 100 ncu --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
      --section Occupancy --section MemoryWorkloadAnalysis -k "regex:^$1\$" -c 1 \
      --metrics smsp__pcsamp_warps_issue_stalled_membar,smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_lg_throttle \
      "$L" bench --backend cuda --op "$2" --variant packed --m "$3" --iters 1 --no-graph --weights "$4" > "$out/ncu_$1_$3_$4.txt" 2>&1
    grep -v "^==PROF==" "$out/ncu_$1_$3_$4.txt" | grep -E "Duration|DRAM Throughput|Compute \(SM\)|Registers|Achieved Occupancy|Issued Warp|No Eligible|stalled|Grid Size|Block Size" | head -16
  done
fi
if has ncularge && command -v ncu >/dev/null; then
  stalls='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
  extra=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,sm__pipe_tensor_op_imma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active
  # NCU_LARGE: "kernel op M family" entries separated by ';'
  IFS=';' read -ra specs <<< "${NCU_LARGE:-lowrank_wgmma lowrank 2048 mma;decoder_wgmma decoder-tail 2048 mma;lowrank_packed lowrank 2048 dp4a;decoder_packed decoder-tail 2048 dp4a}"
  for spec in "${specs[@]}"; do
    set -- $spec
    echo "=== ncu $1 M=$3 ($4)"
    LOWBIT_CUDA_KERNELS=$4 timeout 150 ncu --section SpeedOfLight --section Occupancy --section LaunchStats \
      --metrics "$stalls,$extra" -k "regex:^$1\$" -c 1 \
      "$L" bench --backend cuda --op "$2" --variant packed --m "$3" --iters 1 --no-graph > "$out/ncul_$1_$3.txt" 2>&1
    grep -v "^==PROF==" "$out/ncul_$1_$3.txt" | grep -E "Duration|Throughput|Registers|Achieved Occupancy|Grid Size|stalled|dram__|lts__|pipe|inst_executed|warps_active" \
      | awk '$NF+0 >= 0.05 || !/stalled/' | head -48
  done
fi
if has ncuatom && command -v ncu >/dev/null; then
  # L2 requests by kind (atomics, writes) and time of the small-M tensor-core kernels, i8x4,
  # as M grows: the decoder's split-K atomics and the low-rank stores.
  m=gpu__time_duration.sum,lts__t_requests_op_atom.sum,lts__t_sectors_op_atom.sum,lts__t_requests_op_red.sum
  m=$m,lts__t_requests_op_write.sum,lts__t_sectors_op_write.sum,dram__bytes_read.sum,dram__bytes_write.sum
  m=$m,lts__t_sectors.avg.pct_of_peak_sustained_elapsed
  for spec in "decoder_mma_small decoder-tail 1" "decoder_mma_small decoder-tail 8" \
      "decoder_mma_small decoder-tail 16" "lowrank_mma_small lowrank 8" \
      "lowrank_mma_small lowrank 16"; do
    set -- $spec
    echo "=== ncu $1 M=$3" | tee -a "$sum"
    LOWBIT_CUDA_SMALL_MMA=1 timeout 100 ncu --metrics "$m" -k "regex:^$1\$" -c 1 \
      "$L" bench --backend cuda --op "$2" --variant packed --m "$3" --iters 1 --no-graph \
      > "$out/ncua_$1_$3.txt" 2>&1
    grep -E "gpu__|lts__|dram__" "$out/ncua_$1_$3.txt" | head -12 | tee -a "$sum"
  done
fi
if has targets; then
  # The decoder only with packed input (no target names its f32 input, whose y is 1 GB at M =
  # 8192). TARGET_WEIGHTS / TARGET_DP4A=0 split the step over calls (targets.py reads both).
  all=1,16,512,2048,8192
  for w in ${TARGET_WEIGHTS:-i8x4 ternary2}; do
    bench "targets: $w, lowrank, f32 out" --backend cuda --op lowrank --variant all --m $all \
      --weights $w --json "$out/targets-$w-lowrank.json"
    bench "targets: $w, decoder, f32 out" --backend cuda --op decoder-tail --variant packed \
      --m $all --weights $w --json "$out/targets-$w-decoder.json"
    bench "targets: $w, lowrank, bf16 + ReLU" --backend cuda --op lowrank --variant all --m $all \
      --weights $w --out bf16 --relu --json "$out/targets-$w-lowrank-bf16relu.json"
    bench "targets: $w, decoder, bf16 + ReLU" --backend cuda --op decoder-tail --variant packed \
      --m 1,16 --weights $w --out bf16 --relu --json "$out/targets-$w-decoder-bf16relu.json"
  done
  if [ "${TARGET_DP4A:-1}" != 0 ]; then
    LOWBIT_CUDA_KERNELS=dp4a bench "targets: dp4a, lowrank" --backend cuda --op lowrank \
      --variant all --m 1,16,2048,8192 --json "$out/targets-dp4a-lowrank.json"
    LOWBIT_CUDA_KERNELS=dp4a bench "targets: dp4a, decoder" --backend cuda --op decoder-tail \
      --variant packed --m 1,16,2048,8192 --json "$out/targets-dp4a-decoder.json"
  fi
  echo "=== targets" | tee -a "$sum"
  python3 benches/gpu/targets.py "$out"/targets-*.json 2>&1 | tee -a "$sum"
fi
if has final; then
  bench "final cuda (default family)" --backend cuda --op all --variant all --m 1,16,512,2048,8192 --json "$out/final_cuda.json"
  LOWBIT_CUDA_KERNELS=dp4a bench "final cuda dp4a" --backend cuda --op lowrank,decoder-tail --variant all --m 1,16,512,2048,8192 --json "$out/final_dp4a.json"
  bench "final wgpu" --backend wgpu --op all --variant all --m 1,16,512,2048,8192 --json "$out/final_wgpu.json"
fi
if has ncusmall && command -v ncu >/dev/null; then
  for spec in "lowrank_packed lowrank 16" "lowrank_packed lowrank 1" "decoder_packed decoder-tail 1"; do
    set -- $spec
    echo "=== ncu $1 M=$3"
    LOWBIT_CUDA_KERNELS=dp4a timeout 100 ncu --section SpeedOfLight --section WarpStateStats \
      --section SchedulerStats --section LaunchStats --section Occupancy \
      --metrics smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_barrier \
      -k "regex:$1" -c 1 "$L" bench --backend cuda --op "$2" --variant packed --m "$3" --iters 1 \
      --no-graph > "$out/ncu_$1_$3.txt" 2>&1
    grep -v "^==PROF==" "$out/ncu_$1_$3.txt" | grep -E "Duration|DRAM Throughput|Compute \(SM\)|Registers|Achieved Occupancy|Issued Warp|No Eligible|stalled" | head -12
  done
fi
echo "=== summary"; cat "$sum"
# What this sweep wrote but its summary, in one archive (the device tool returns a few files
# only).
(cd "$out" && tar czf "logs-$tag.tgz" --remove-files \
  $(ls | grep -vxF -f <(printf '%s\n' "${pre[@]}") | grep -v -e '^summary-.*\.txt$' \
    -e '^logs-.*\.tgz$') 2>/dev/null)
