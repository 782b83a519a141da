"""The project's benchmark scripts, a package so that they import each other and `jetspec` the
standard way. Run them from the repository root as modules:

    python -m bench.round_cost --tiny --out /tmp/rc.jsonl
    python -m bench.kernel_breakdown --model tiny-llama --exact on off

(`python bench/<script>.py` works too where the repository root is on PYTHONPATH, as in
bench/device/h200.sh.) A user's benchmark runs go through `jetspec bench` (`jetspec/bench/`)."""
