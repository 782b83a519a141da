"""Scripts for the lent GPU machines: `h200.sh` (every GPU step), `prepare.sh` and
`out_of_tree.sh` (run here, before a call), and the Python checks it runs, e.g.
`python -m bench.device.cute_smoke` from the repository root. Each exits non-zero on a failure."""
