#!/usr/bin/env bash
# Run HERE (the dev machine, which reaches PyPI) before the peer steps of bench/device/h200.sh
# (issue 19): fills ignored folders that the H200 calls carry, each part <= 55 MB so that a part and
# the working tree fit in one 64 MiB call (move the head checkpoints out first: out_of_tree.sh out).
#
#   bash bench/device/prepare_peers.sh [llama] [flashinfer]     (default: both)
#
#   .stage5/  the first 55 MB of the llama-cpp-python sdist, its sha256,     } a call running `stage`
#             diskcache (its one dependency beyond numpy, jinja2 and         }
#             typing_extensions, which the H200 image has), scikit-build-core }
#             + pathspec + packaging (its build backend: no index there)     }
#   .stage6/  the rest of the sdist                                           } the next: stage llama-build ...
#   .stage7/  the first 55 MB of the flashinfer-python wheel, its sha256      } a call running `stage`
#   .stage8/  the rest, apache-tvm-ffi and nvidia-ml-py (what `import         } the next: stage flashinfer ...
#             flashinfer` needs beyond torch)
#
# The steps join the parts in /tmp/keep and check the joined file against its <name>.sha256.
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_VERSION=${LLAMA_VERSION:-0.3.36}
FLASHINFER_VERSION=${FLASHINFER_VERSION:-0.7.4}
PART=55000000
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
# split FILE PREFIX DIR...: FILE into <= PART-byte parts PREFIX.part-aa, -ab, ... one per DIR, in order
split_into() {
  local file=$1 prefix=$2 tmp; shift 2; tmp=$(dirname "$file")
  (cd "$tmp" && split -b $PART "$(basename "$file")" "$prefix.part-")
  local parts=("$tmp/$prefix".part-*)
  [ ${#parts[@]} -le $# ] || { echo "$file needs ${#parts[@]} parts, only $# folders"; exit 1; }
  local i=0; for d in "$@"; do [ $i -lt ${#parts[@]} ] && mv "${parts[$i]}" "$d/"; i=$((i + 1)); done
  (cd "$tmp" && sha256sum "$(basename "$file")") > "$1/$prefix.sha256"
}
what=${*:-llama flashinfer}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for w in $what; do
  case $w in
    llama)
      rm -rf .stage5 .stage6; mkdir -p .stage5 .stage6
      python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$tmp"
      pipdl .stage5 diskcache==5.6.3 scikit-build-core pathspec packaging
      split_into "$tmp/llama_cpp_python-$LLAMA_VERSION.tar.gz" llama .stage5 .stage6 ;;
    flashinfer)
      rm -rf .stage7 .stage8; mkdir -p .stage7 .stage8
      python3 -m pip download -q --no-deps --only-binary=:all: "flashinfer-python==$FLASHINFER_VERSION" -d "$tmp"
      pipdl .stage8 "apache-tvm-ffi<0.2,>=0.1.11" nvidia-ml-py
      split_into "$tmp/flashinfer_python-$FLASHINFER_VERSION-py3-none-any.whl" flashinfer .stage7 .stage8 ;;
    *) echo "usage: prepare_peers.sh [llama] [flashinfer]"; exit 2 ;;
  esac
done
du -sh .stage5 .stage6 .stage7 .stage8 2>/dev/null || true
