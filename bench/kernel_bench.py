"""Tree-attention kernels at Qwen3-8B shapes vs FlexAttention and SDPA, against the physical floor.

    python -m bench.kernel_bench [--out bench/results/kernels.jsonl]

On one CUDA GPU: measures copy bandwidth and the bf16 matmul rate, then for each context
(committed keys T) and tree size N (realistic best-first trees) times

    triton           our paged kernel (heuristic tiling), page size 16, pages in shuffled order
    triton-autotune  the same with `autotune=True` (config recorded in the row)
    triton-exact     its position-invariant kernel (`exact = true`) for one layer (the ancestor
                     table, built once per forward, outside the timing); `triton-exact:split_keys=2048`
                     a variant (TritonAttentionOptions)
    cute             the CuTe DSL kernel (jetspec[cute]; an error row where it cannot run);
                     `cute:mma=warp,num_warps=8,...` times a variant (CuteAttentionOptions)
    cute-exact       its position-invariant kernel (`exact = true`), `cute-exact:split_keys=1024` a variant
    flex             torch FlexAttention, compiled, block mask from the same interval rule
    sdpa             torch scaled_dot_product_attention with a dense [N, T + N] bool mask
    flashinfer       FlashInfer (`bench/flashinfer_attention.py`): paged prefill with the tree as a
                     packed custom mask, its decode kernel at 1 node; `flashinfer:backend=fa2` a variant

after checking each against the fp32 reference. floor = max(bytes / copy bandwidth,
4 * N * Hq * (T + N) * D / matmul rate), bytes = K and V of all keys + q + out. Appends one JSON
row per (backend, context, tree) to --out and prints a table and the goals. A backend that fails
records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from jetspec.caches.paged import PagedCacheOptions, PagedKVCache  # noqa: E402
from jetspec.core.interfaces import AttentionMeta, TargetInfo  # noqa: E402
from jetspec.core.tree import DraftTree  # noqa: E402
from jetspec.kernels.reference import meta_mask, tree_attention  # noqa: E402
from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16  # Qwen3-8B attention
DTYPE = torch.bfloat16


# ---------------------------------------------------------------------------- the machine
def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device copy (read + write both counted)."""
    from triton.testing import do_bench

    x = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=10, rep=100, return_mode="median")
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 matmul."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = do_bench(lambda: a @ b, warmup=10, rep=100, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3)


# ---------------------------------------------------------------------------- problems
def best_first_tree(nodes: int, seed: int, fanout: int = 8) -> DraftTree:
    """The exact top-`nodes` tree under per-depth marginals (DDTree's best-first): each pop adds
    one node and pushes its next sibling and its first child. Marginals are sorted Dirichlet(0.3)
    draws, so trees are deep where the drafter is confident and bushy where it is not."""
    rng = random.Random(seed)

    def marginal() -> list[float]:
        g = sorted((rng.gammavariate(0.3, 1.0) + 1e-9 for _ in range(fanout)), reverse=True)
        return [math.log(x / sum(g)) for x in g]

    depth_logp = [marginal()]  # depth_logp[d - 1][r]: log-prob of the rank-r candidate at depth d
    parents, score = [-1], [0.0]
    heap = [(-depth_logp[0][0], 0, 0, 1)]  # candidates: (-cumulative log-prob, parent, rank, depth)
    while len(parents) < nodes and heap:
        neg, parent, rank, depth = heapq.heappop(heap)
        node = len(parents)
        parents.append(parent)
        score.append(-neg)
        if rank + 1 < fanout:  # next sibling
            heapq.heappush(heap, (-(score[parent] + depth_logp[depth - 1][rank + 1]), parent, rank + 1, depth))
        if len(depth_logp) <= depth:
            depth_logp.append(marginal())
        heapq.heappush(heap, (-(-neg + depth_logp[depth][0]), node, 0, depth + 1))  # first child
    tokens = list(range(len(parents)))  # node ids as tokens: siblings always differ
    return DraftTree.from_parents(tokens, parents)


class Problem:
    def __init__(self, context: int, nodes: int, seed: int = 0, device: str = "cuda"):
        g = torch.Generator(device=device).manual_seed(seed)
        info = TargetInfo("qwen3-8b-attn", "qwen3", 1, HQ * D, 1, HKV, D, 1 << 20, DTYPE, torch.device(device))
        self.tree = best_first_tree(nodes, seed)
        self.cache = PagedKVCache(info, context + nodes, PagedCacheOptions(page_size=PAGE))
        random.Random(seed).shuffle(self.cache.allocator._free)  # a pool that has seen other sequences
        self.cache.begin(context)
        self.cache.write(0, *(torch.randn(context, HKV, D, generator=g, device=device, dtype=DTYPE) for _ in range(2)))
        self.cache.commit(range(context))
        self.meta = AttentionMeta.for_tree(self.tree, context, device)
        self.cache.begin(nodes)
        self.cache.write(0, *(torch.randn(nodes, HKV, D, generator=g, device=device, dtype=DTYPE) for _ in range(2)))
        self.q = torch.randn(nodes, HQ, D, generator=g, device=device, dtype=DTYPE)  # [N, Hq, D]
        self.scale = D**-0.5
        self.k, self.v = self.cache.read(0)  # [T + N, Hkv, D], logical order, for flex and sdpa
        self.expected = tree_attention(self.q.float(), self.k.float(), self.v.float(), self.meta, self.scale)
        self.context, self.nodes = context, nodes



def floors(context: int, nodes: int, bandwidth: float, rate: float) -> tuple[float, float]:
    """(bytes floor, FLOPs floor) in ms."""
    keys = context + nodes
    moved = 2 * keys * HKV * D * 2 + 2 * nodes * HQ * D * 2  # K, V, q, out (bytes)
    return moved / bandwidth * 1e3, 4 * nodes * HQ * keys * D / rate * 1e3


# ---------------------------------------------------------------------------- backends
def exact_fn(p: Problem, options: TritonAttentionOptions):
    """One layer of the position-invariant kernel: the ancestor table, which a forward builds once
    for all its layers, is made here once, outside the timing."""
    from jetspec.kernels.row_inputs import ancestor_table
    from jetspec.kernels.triton_invariant_attention import BLOCK_N, invariant_tree_attention

    k_rows, v_rows, slots = TritonAttention(options)._kv_rows(p.cache, 0)  # [R, Hkv, D] x 2, [C] int32
    positions = p.meta.positions.to(p.q.device)  # [N] int64
    prefix = torch.tensor([p.context], dtype=torch.int32, device=p.q.device)  # [1]
    ancestors = ancestor_table(positions, prefix)  # [N, N] int32
    return lambda: invariant_tree_attention(p.q, k_rows, v_rows, slots, positions, ancestors, prefix, p.scale,
                                            options.split_keys // BLOCK_N, False, options.block_m or 0,
                                            options.num_warps or 0, options.num_stages or 0)


def triton_fn(p: Problem, options: TritonAttentionOptions):
    backend = TritonAttention(options)
    backend.attend(p.q, p.cache, 0, p.meta, p.scale)  # autotunes (if asked) before any capture
    return lambda: backend.attend(p.q, p.cache, 0, p.meta, p.scale), backend


def options_of(name: str) -> dict:
    """`backend:key=value,...` -> the options it names (a value that is not JSON is a string)."""
    def value(text: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    _, _, spec = name.partition(":")
    return {k: value(v) for k, v in (kv.split("=", 1) for kv in spec.split(",") if kv)}


def cute_options(name: str):
    """`cute` or `cute:key=value,...` (CuteAttentionOptions fields): one variant per backend name,
    e.g. `cute:mma=warpgroup,num_warps=8,num_splits=4`."""
    from jetspec.kernels.cute_backend import CuteAttentionOptions

    return CuteAttentionOptions(**options_of(name))


def cute_fn(p: Problem, name: str = "cute"):
    from jetspec.core.errors import IncompatibleError
    from jetspec.kernels.cute_backend import CuteAttention, unavailable

    reason = unavailable()
    if reason:
        raise IncompatibleError(reason)
    backend = CuteAttention(cute_options(name))
    backend.attend(p.q, p.cache, 0, p.meta, p.scale)  # compiles before any capture
    return lambda: backend.attend(p.q, p.cache, 0, p.meta, p.scale), backend


def cute_exact_fn(p: Problem, name: str):
    """One layer of the cute position-invariant kernel: int32 positions and the ancestor table,
    which a forward builds once for all its layers, are made here once, outside the timing."""
    from jetspec.core.errors import IncompatibleError
    from jetspec.kernels.cute_backend import CuteAttention, CuteAttentionOptions, unavailable
    from jetspec.kernels.row_inputs import ancestor_table

    reason = unavailable()
    if reason:
        raise IncompatibleError(reason)
    from jetspec.kernels.cute_invariant_attention import invariant_tree_attention

    options = CuteAttentionOptions(**options_of(name))
    k_rows, v_rows, slots = CuteAttention(options)._kv_rows(p.cache, 0)  # [R, Hkv, D] x 2, [C] int32
    positions = p.meta.positions.to(p.q.device)  # [N] int64
    prefix = torch.tensor([p.context], dtype=torch.int32, device=p.q.device)  # [1]
    ancestors = ancestor_table(positions, prefix)  # [N, N] int32
    positions = positions.to(torch.int32)
    splits = -(-(p.context + p.q.shape[0]) // options.split_keys)
    return lambda: invariant_tree_attention(p.q, k_rows, v_rows, slots, positions, ancestors, prefix, p.scale,
                                            options.split_keys, splits, False)


def flex_fn(p: Problem):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    t, n = p.context, p.nodes
    sizes = p.meta.subtree_sizes.to(p.q.device, torch.int32)  # [N]

    def mask_mod(b, h, q_idx, kv_idx):  # the interval rule, as the reference states it
        j = kv_idx - t
        size = sizes[j.clamp(0, n - 1)]
        return (kv_idx < t) | ((j <= q_idx) & (q_idx < j + size))

    block_mask = create_block_mask(mask_mod, None, None, n, t + n, device=p.q.device)
    q = p.q.transpose(0, 1)[None]  # [1, Hq, N, D]
    k, v = (x.transpose(0, 1)[None].contiguous() for x in (p.k, p.v))  # [1, Hkv, T + N, D]
    attend = torch.compile(flex_attention, dynamic=False) if p.q.is_cuda else flex_attention
    return lambda: attend(q, k, v, block_mask=block_mask, scale=p.scale, enable_gqa=True)[0].transpose(0, 1)


def sdpa_fn(p: Problem):
    mask = meta_mask(p.meta, p.q.device)[None, None]  # [1, 1, N, T + N] bool
    q = p.q.transpose(0, 1)[None]  # [1, Hq, N, D]
    k, v = (x.transpose(0, 1)[None].contiguous() for x in (p.k, p.v))  # [1, Hkv, T + N, D]
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=p.scale, enable_gqa=True)[0].transpose(0, 1)


def timed(fn) -> tuple[float, float | None]:
    """Median ms (eager with an L2 flush per call, then inside one CUDA graph: no launch overhead,
    but L2 stays warm across calls). The graph time is None when capture fails."""
    from triton.testing import do_bench, do_bench_cudagraph

    eager = do_bench(fn, warmup=25, rep=100, return_mode="median")
    try:
        graph = do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception:
        torch.cuda.synchronize()
        graph = None
    return eager, graph


def kernel_times(fn, calls: int = 20) -> dict[str, float]:
    """Device µs per call of each kernel `fn` launches (torch profiler), by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return {e.key[:60]: round(e.device_time_total / calls, 1) for e in prof.key_averages() if e.device_time_total > 0}


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/kernels.jsonl")
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--trees", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--backends", nargs="+", default=["triton", "triton-autotune", "cute", "flex", "sdpa", "flashinfer"])
    ap.add_argument("--kernels", action="store_true", help="also record each kernel's device time (torch profiler)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_bench: error: needs a CUDA GPU")
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = 64  # one flex compile per shape
    start = time.time()
    stamp = dict(
        machine=f"{torch.cuda.get_device_name()} ({platform.node()})",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command="python -m bench.kernel_bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        dtype=str(DTYPE).removeprefix("torch."),
        torch=torch.__version__,
        triton=__import__("triton").__version__,
    )
    bandwidth, rate = copy_bandwidth(), matmul_rate()
    print(f"{stamp['machine']}: copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print("time = CUDA-graph median (eager median with L2 flush in brackets); floor = max(bytes, FLOPs) floor")
    print(f"{'context':>8} {'tree':>5} {'backend':>16} {'time_us':>9} {'(eager)':>9} {'floor_us':>9} {'%floor':>7}  note")
    results: dict[tuple[int, int, str], float] = {}
    for context in args.contexts:
        for nodes in args.trees:
            p = Problem(context, nodes)
            bytes_ms, flops_ms = floors(context, nodes, bandwidth, rate)
            floor_ms = max(bytes_ms, flops_ms)
            for name in args.backends:
                row = dict(backend=name, context=context, tree=nodes, floor_ms=floor_ms, bytes_floor_ms=bytes_ms,
                           flops_floor_ms=flops_ms, time_ms=None, **stamp)
                try:
                    if name.split(":")[0] == "triton-exact":
                        fn = exact_fn(p, TritonAttentionOptions(**options_of(name)))
                        row["config"] = options_of(name)
                    elif name.startswith("triton"):
                        fn, backend = triton_fn(p, TritonAttentionOptions(autotune=name == "triton-autotune"))
                        cfg = backend.config(nodes, HQ // HKV, HKV, context + nodes, D, p.q)
                        row["config"] = cfg.__dict__
                    elif name.split(":")[0] == "cute-exact":
                        fn = cute_exact_fn(p, name)
                        row["config"] = options_of(name)
                    elif name.split(":")[0] == "flashinfer":
                        from bench.flashinfer_attention import flashinfer_fn

                        fn, row["config"] = flashinfer_fn(p, options_of(name))
                    elif name.split(":")[0] == "cute":
                        fn, backend = cute_fn(p, name)
                        k_rows = p.cache.k[0].view(-1, HKV, D)
                        o = backend.options
                        row["config"] = {**backend.tiling(p.q, k_rows, p.meta)._asdict(), "pipelined": o.pipelined, "stages": o.stages,
                                         "specialized": o.specialized, "pingpong": o.pingpong}
                    else:
                        fn = flex_fn(p) if name == "flex" else sdpa_fn(p)
                    err = (fn().float() - p.expected).abs().max().item()
                    row["max_abs_err"] = err
                    if not err < 3e-2:
                        raise AssertionError(f"output differs from the reference by {err:.3g}")
                    row["eager_ms"], row["graph_ms"] = timed(fn)
                    row["time_ms"] = row["graph_ms"] or row["eager_ms"]
                    if args.kernels:
                        row["kernel_us"] = kernel_times(fn)
                    results[(context, nodes, name)] = row["time_ms"]
                except Exception as e:  # record and go on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                t = row["time_ms"]
                note = row.get("error") or str(row.get("config", "")) + (f" {row['kernel_us']}" if "kernel_us" in row else "")
                eager = row.get("eager_ms") or float("nan")
                print(f"{context:>8} {nodes:>5} {name:>16} {t * 1e3 if t else float('nan'):>9.1f} ({eager * 1e3:>7.1f}) "
                      f"{floor_ms * 1e3:>9.1f} {100 * floor_ms / t if t else 0:>6.0f}%  {note}", flush=True)
            del p
            torch.cuda.empty_cache()
    print(f"\nrows appended to {out}; {time.time() - start:.0f} s")
    goals(results, args, bandwidth, rate)


def goals(results, args, bandwidth, rate) -> None:
    """The issue's targets at 16384 context, as PASS/FAIL lines."""
    def ours(n):  # the best triton variant at this shape
        times = [(results[(16384, n, b)], b) for b in ("triton", "triton-autotune") if (16384, n, b) in results]
        if not times:
            return None
        t, b = min(times)
        print(f"16384/{n}: best triton variant {b} ({t * 1e3:.1f} us)")
        return t

    if 16384 not in args.contexts:
        return
    t = ours(256) if 256 in args.trees else None
    if t:
        peers = [results[(16384, 256, b)] for b in ("flex", "sdpa") if (16384, 256, b) in results]
        if peers:
            x = min(peers) / t
            print(f"16384/256: {x:.2f}x the faster of flex/sdpa (goal >= 1.5x): {'PASS' if x >= 1.5 else 'FAIL'}")
        share = max(floors(16384, 256, bandwidth, rate)) / t
        print(f"16384/256: {100 * share:.0f}% of the floor (goal >= 40%): {'PASS' if share >= 0.4 else 'FAIL'}")
    for (c, n, b), t_fi in sorted(results.items()):  # issue 19: >= 1.3x FlashInfer at 16384/256, >= 1.0x elsewhere
        mine = [results[(c, n, x)] for x in ("triton", "triton-autotune") if (c, n, x) in results]
        if b == "flashinfer" and n > 1 and mine:
            x, goal = t_fi / min(mine), 1.3 if (c, n) == (16384, 256) else 1.0
            print(f"{c}/{n}: {x:.2f}x flashinfer (goal >= {goal}x): {'PASS' if x >= goal else 'FAIL'}")
    t1 = ours(1) if 1 in args.trees else None
    if t1:
        share = floors(16384, 1, bandwidth, rate)[0] / t1
        print(f"16384/1: {100 * share:.0f}% of the bandwidth floor (goal >= 70%): {'PASS' if share >= 0.7 else 'FAIL'}")

if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    main()
