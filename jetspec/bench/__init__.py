"""`jetspec bench`: τ, speed and losslessness of pipelines against plain decoding and peers.

    config.py        BenchConfig: target, datasets, pipelines (budget sweeps), peers, output
    datasets.py      built-in prompt sets and user JSONL files, seeded subsets
    runner.py        plan (all checks before any model loads), then the timed loop
    mismatch.py      first differing token and the target's top-2 logit gap there
    faithfulness.py  rank-1 branch likelihood against the target's greedy continuation
    peers.py         `transformers` generate / prompt lookup / assisted generation; registers the others
    llama_cpp_peer.py  llama.cpp (llama-cpp-python) greedy and prompt-lookup decoding on the target's GGUF
    gguf_precision.py  the default model's GGUF as shipped (q4_1) or rewritten at f32 / bf16 / f16
    rows.py          the JSONL results file: append, resume, summaries
    report.py        summary rows and the RESULTS.md table
    plots.py         τ vs budget, speedup per dataset (PNG)
"""

from .config import BenchConfig, DatasetSpec, PeersConfig, PipelineSpec
from .plan import plan_bench
from .runner import BenchOutcome, run_bench

__all__ = ["BenchConfig", "BenchOutcome", "DatasetSpec", "PeersConfig", "PipelineSpec", "plan_bench", "run_bench"]
