#!/usr/bin/env bash
# A tree for `h200.sh ab` to run beside the working tree: revision REV's jetspec/ and bench/ (without the
# checkpoints, results and corpus a call cannot carry), then each FILE's sed EDIT — an edit that changes nothing
# is an error, so a variant never silently equals its base.
#
#   bash bench/device/variant.sh DIR REV [FILE EDIT]...
#   bash bench/device/variant.sh .old 8ecf62c
#   bash bench/device/variant.sh .vp HEAD jetspec/core/invariant.py 's/ and rows == 1 else 0), step/ else 0), step/'
#
# Carry DIR (an ignored folder: .old, or one matching .v*) in the call: run(carry=[".whl", ".old", ".vp"]),
# then AB_SIDES="base=.old now=. prefetch=.vp" bash bench/device/h200.sh stage ab.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] && [ $(( $# % 2 )) = 0 ] || { echo "usage: variant.sh DIR REV [FILE EDIT]..."; exit 2; }
dir=$1 rev=$2 edits=$(( ($# - 2) / 2 ))
shift 2
git check-ignore -q "$dir/" || { echo "variant.sh: $dir is not an ignored path (a call carries ignored folders: .old, .v*)"; exit 2; }
rm -rf "$dir" && mkdir -p "$dir"
git archive "$rev" jetspec bench | tar -x -C "$dir"
rm -rf "$dir"/jetspec/assets "$dir"/bench/results "$dir"/bench/heads "$dir"/bench/corpus "$dir"/bench/plots "$dir"/bench/RESULTS.md
while [ $# -gt 0 ]; do
  file=$dir/$1 edit=$2
  shift 2
  [ -f "$file" ] || { echo "variant.sh: no $file in $rev"; exit 1; }
  before=$(sha256sum "$file")
  sed -i "$edit" "$file"
  [ "$(sha256sum "$file")" != "$before" ] || { echo "variant.sh: '$edit' changes nothing in $file"; exit 1; }
done
echo "$dir: $rev, $edits edit(s), $(du -sh "$dir" | cut -f1)"
