#!/usr/bin/env bash
# A device call carries at most 64 MiB, the working tree included; the tracked head checkpoints
# (3 x 15 MB; their head.json files stay), the heads' answers file, bench/results (10 MB) and the corpus (8 MB) do not fit beside a staged wheel
# part. `out` moves them to /tmp/jetspec-out-of-tree before staging calls, `in` brings them back.
set -euo pipefail
cd "$(dirname "$0")/../.."
keep=/tmp/jetspec-out-of-tree
paths="bench/heads/SmolLM2-135M-Instruct/answers.safetensors bench/heads/SmolLM2-135M-Instruct/dflash/head.safetensors
  bench/heads/SmolLM2-135M-Instruct/eagle/head.safetensors jetspec/assets/heads/SmolLM2-135M-Instruct/causal/head.safetensors bench/results
  bench/corpus/SmolLM2-135M-Instruct.tar.xz"
case "${1:-}" in
  out) mkdir -p $keep; for p in $paths; do [ -e $p ] && mkdir -p $keep/$(dirname $p) && mv $p $keep/$p; done; echo "moved out: $paths" ;;
  in) for p in $paths; do [ -e $keep/$p ] && mkdir -p $(dirname $p) && rm -rf $p && mv $keep/$p $p; done; echo "back in: $paths" ;;
  *) echo "usage: out_of_tree.sh out|in"; exit 2 ;;
esac
