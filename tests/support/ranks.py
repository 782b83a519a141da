"""Several ranks of one torch.distributed group on the CPU (gloo), for tests.

`on_ranks(fn, world, *args)` starts `world` spawned processes with torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), runs `fn(rank, *args)` inside
`jetspec.core.distributed.process_group` in each, and returns their results in rank order (or
raises the first rank's error). `fn` must be importable (a module-level function here).
`rank_env(rank, world, port)` is the same environment for a subprocess (`jetspec.cli` under a
pretend torchrun). `distributed_available()` says whether gloo can run here.
"""

from __future__ import annotations

import io
import os
import socket
import traceback
from typing import Any, Callable

import torch


def distributed_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _child(rank: int, world: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    from jetspec.core.distributed import process_group

    try:
        with process_group(timeout_s=60):
            buf = io.BytesIO()  # bytes, not tensors: a queued tensor is shared memory that dies with this process
            torch.save(fn(rank, *args), buf)
            results.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 -- reported to the parent
        results.put((rank, "error", traceback.format_exc()))


def on_ranks(fn: Callable, world: int, *args: Any, timeout_s: float = 120) -> list[Any]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    got: dict[int, tuple[str, Any]] = {}
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout_s)
            got[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [f"rank {r}:\n{v}" for r, (s, v) in sorted(got.items()) if s == "error"]
    assert not errors, "\n".join(errors)
    return [torch.load(io.BytesIO(got[r][1]), weights_only=False) for r in range(world)]


# ---------------------------------------------------------------------------- what ranks run
def decoder_logits(rank: int, folders: list[str], degree: int, prompt: list[int], tree: tuple[list[int], list[int]],
                   cache_kind: str) -> list[dict[str, torch.Tensor]]:
    """For each checkpoint folder: our decoder at tensor_parallel = degree (1: the whole model in
    this process) prefills `prompt` and then verifies the tree (tokens, parents) in one forward ->
    {"prefill": logits [T, V], "tree": logits [N, V], "hidden": [N, 2, H], "kv_heads": cache heads}."""
    from jetspec.caches.dense import DenseKVCache
    from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
    from jetspec.core.interfaces import AttentionMeta
    from jetspec.core.tree import DraftTree
    from jetspec.kernels.reference import TorchAttention
    from jetspec.targets.decoder import DecoderTargetOptions, load_decoder_target

    out = []
    for folder in folders:
        # fp32 on any device (one process: the GPU when there is one, as the ranks under NCCL)
        target = load_decoder_target(DecoderTargetOptions(path=folder, dtype="float32", tensor_parallel=degree),
                                     TorchAttention())
        dev = target.info.device
        if cache_kind == "paged":
            cache = PagedKVCache(target.info, 256, PagedCacheOptions(page_size=4, commit="remap"))
        else:
            cache = DenseKVCache(target.info, 256)
        cache.begin(len(prompt))
        chain = AttentionMeta.for_chain(len(prompt), 0, dev)
        prefill = target.forward(torch.tensor(prompt, device=dev), chain, cache).logits.cpu()
        cache.commit(range(len(prompt)))
        t = DraftTree.from_parents(*tree)
        cache.begin(t.size)
        res = target.forward(t.tokens.to(dev), AttentionMeta.for_tree(t, cache.committed, dev), cache, hidden_layers=(0, 1))
        out.append({"prefill": prefill, "tree": res.logits.cpu(), "hidden": res.hidden.cpu(),
                    "kv_heads": int(cache.k.shape[-2]), "fingerprint": target.info.fingerprint})
    return out


def speculative_and_plain(rank: int, folder: str, degree: int, prompts: list[list[int]], budget: int,
                          max_new: int) -> dict[str, list]:
    """Our decoder at tensor_parallel = degree, n-gram drafter, paged cache with remap commits:
    {"spec", "plain": greedy tokens per prompt, "tau": τ per prompt, "sampled": an unseeded
    sampling verifier's speculative tokens per prompt (fresh entropy on every rank)}."""
    import jetspec

    def pipe(verifier):
        return jetspec.from_config({
            "target": {"name": "decoder", "path": folder, "tensor_parallel": degree, "dtype": "float32"},
            "drafter": {"name": "ngram", "n_max": 3}, "verifier": verifier,
            "kv_cache": {"name": "paged", "page_size": 4, "commit": "remap"}, "attention": "torch",
            "generation": {"budget": budget, "max_new_tokens": max_new},
        })

    greedy, sampling = pipe("greedy"), pipe({"name": "sampling", "temperature": 1.0})
    out: dict[str, list] = {"spec": [], "plain": [], "tau": [], "sampled": []}
    for p in prompts:
        spec = greedy.generate(p)
        out["spec"].append(spec.tokens)
        out["tau"].append(spec.stats.tau)
        out["plain"].append(greedy.generate_plain(p).tokens)
        out["sampled"].append(sampling.generate(p).tokens)
    return out


def bench_results(rank: int, folder: str, prompts: str, output: str, degree: int) -> list[dict]:
    """`jetspec bench` (run_bench) of one n-gram pipeline over the JSONL `prompts`, under the live
    group: tensor-parallel (degree = WORLD_SIZE: lockstep, rank 0 writes) or data-parallel
    (degree 1: a shard per rank) -> the rows of the results file once every rank is done."""
    from jetspec.bench.config import BenchConfig
    from jetspec.bench.rows import read_rows
    from jetspec.bench.runner import run_bench
    from jetspec.core.distributed import barrier, current

    config = BenchConfig.parse({
        "name": "ranks", "output": output, "max_new_tokens": 8, "warmup_tokens": 0, "faithfulness": "off",
        "target": {"name": "decoder", "path": folder, "tensor_parallel": degree, "dtype": "float32"},
        "datasets": [{"name": "mine", "path": prompts, "field": "prompt"}],
        "pipelines": [{"name": "ngram", "drafter": {"name": "ngram", "n_max": 3}, "budget": 4}],
    })
    outcome = run_bench(config, progress=False, ranks=current())
    barrier(current())  # rank 0 has summarised
    return [r for r in read_rows(outcome.results) if r.get("kind") in ("plain", "spec", "summary")]


def decode_and_bench(rank: int, folder: str, prompts: list[list[int]], budget: int, max_new: int, prompt_file: str,
                     output: str) -> dict:
    """What the tensor-parallel tests need from one pair of ranks (one spawn): `speculative_and_plain`
    at TP = 2, then `bench_results` at TP = 2 and data-parallel."""
    return {"decode": speculative_and_plain(rank, folder, 2, prompts, budget, max_new),
            "bench_tp": bench_results(rank, folder, prompt_file, f"{output}/tp", 2),
            "bench_dp": bench_results(rank, folder, prompt_file, f"{output}/dp", 1)}


def several(rank: int, calls: list[tuple[Callable, tuple]]) -> list[Any]:
    """[fn(rank, *args) for each (fn, args)]: several workloads in one spawn (one start-up)."""
    return [fn(rank, *args) for fn, args in calls]
