"""Round cost at Qwen3-8B shape: one tree verification vs one plain greedy step, in our engine.

    python -m bench.round_cost [--out bench/results/round_cost.jsonl] [--model qwen3-32b]
    python -m bench.round_cost --tiny --out /tmp/rc.jsonl     # any machine, seconds
    torchrun --nproc-per-node 2 -m bench.round_cost ...       # tensor parallel over the ranks (TP = WORLD_SIZE)

Builds our `DecoderTarget` from the Qwen3-8B config (36 layers, hidden 4096, 32 q / 8 kv heads,
head dim 128, MLP 12288, vocab 151936, RoPE theta 1e6, q/k norm, untied head) with random bf16
weights made on the GPU (no checkpoint: the round cost does not depend on the weights' values),
Triton attention, paged KV (page 16), CUDA graphs. For each context T it

1. makes a paged cache of T + max(trees) + graph padding slots and writes T committed tokens of
   random K/V into it through the cache's own begin / write / commit, layer by layer. That is
   what a prefill leaves behind, minus the prefill itself: attention cost does not depend on
   the K/V values, and a 16k prefill of an 8B model would cost more device time than the whole
   measurement (and 10 GB of fp32 logits unless chunked). The free page list is shuffled, as in
   kernel_bench.py (a pool that has served other sequences);
2. drops the target's CUDA graphs and lets the first forward capture them again at this T, as a
   pipeline does after its prefill (the attention's split-K grid is chosen at capture from T);
3. times, for N = 1 (a plain greedy step) and realistic best-first-shaped trees of N = B nodes
   (`kernel_bench.best_first_tree`, AttentionMeta.for_tree): `cache.begin(N)` then
   `target.forward(tokens, meta, cache)` and nothing else (no hidden states returned, as for the
   n-gram drafter). The next `begin` discards the pending K/V, so the context stays T.

Two times per row, medians of --reps samples after --warmup:
    time_ms  one synchronised round: begin (host bookkeeping, slot-table upload) + forward
             (static-buffer copies + graph replay), between CUDA events, GPU idle before it.
             This is what a decode round pays for the target.
    gpu_ms   the forward alone, back to back (the host runs ahead): the GPU work of one replay.
ratio = time_ms / plain time_ms. The speedup ceiling for an acceptance length τ (tokens committed
per round) is τ · T(1) / T(B): drafting, acceptance and commit cost are excluded, so no drafter
can beat it. Floor (DESIGN.md §5) = max(bytes ÷ measured copy bandwidth, FLOPs ÷ measured bf16
matmul rate), bytes = all weights but the embedding table (a gather of N rows) + K/V of T + N keys
over all layers, FLOPs = 2 · those weights' parameters · N plus attention's 4 · L · N · Hq ·
(T + N) · D (not negligible at 16k: DESIGN's formula leaves it out).

Every (context, nodes) pair is one JSON row appended to --out; a failing row (OOM, capture,
...) records its error and the run goes on. --tiny runs the same code on a 2-layer model with
contexts 64/128 and trees 1/16: on a CPU with reference attention, a dense cache and
perf_counter timing (what tests/test_round_cost_script.py runs); on CUDA with the real backends.

Under torchrun the target is split over the WORLD_SIZE ranks (`tensor_parallel`, NCCL on GPUs,
gloo on CPUs): every rank runs the same rounds in lockstep, rank 0 times them and writes the rows
(`tensor_parallel` in each). Its floors are per GPU: the weights a rank reads (its shards plus
the replicated embedding-free LM head), its KV heads and its query heads.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.kernel_bench import best_first_tree
from jetspec.core.distributed import Ranks, process_group
from jetspec.core.interfaces import AttentionMeta, TargetInfo
from jetspec.core.invariant import launch_options
from jetspec.targets.decoder.config import DecoderConfig, RopeConfig
from jetspec.targets.decoder.model import DecoderModel, DecoderTarget
from jetspec.targets.decoder.parallel import check_degree, local_config

TAUS = (2.0, 3.0, 4.0, 6.0)  # acceptance lengths for the ceiling columns

QWEN3_8B = DecoderConfig(  # Qwen/Qwen3-8B config.json
    architecture="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
    num_heads=32, num_kv_heads=8, head_dim=128, max_positions=40960, rms_norm_eps=1e-6, qk_norm=True,
    tie_embeddings=False, rope=RopeConfig(theta=1_000_000.0), eos_token_ids=(151645,),
)
QWEN3_32B = DecoderConfig(  # Qwen/Qwen3-32B config.json: 64 GB of bf16 weights
    architecture="qwen3", vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_layers=64,
    num_heads=64, num_kv_heads=8, head_dim=128, max_positions=40960, rms_norm_eps=1e-6, qk_norm=True,
    tie_embeddings=False, rope=RopeConfig(theta=1_000_000.0), eos_token_ids=(151645,),
)
MODELS = {"qwen3-8b": QWEN3_8B, "qwen3-32b": QWEN3_32B}
TINY = DecoderConfig(
    architecture="qwen3", vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=64, max_positions=4096, qk_norm=True, tie_embeddings=False,
    rope=RopeConfig(theta=1_000_000.0),
)


# ---------------------------------------------------------------------------- the machine
def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a device copy of `nbytes` (read + write both counted), as kernel_bench.py."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    return 2 * nbytes / (bench(lambda: y.copy_(x), device) * 1e-3)


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n^3 matmul in `dtype`, as kernel_bench.py (8192^3 bf16 on the GPU)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / (bench(lambda: a @ b, device) * 1e-3)


def bench(fn, device: torch.device) -> float:
    """Median ms: triton's do_bench on CUDA (what kernel_bench.py uses), perf_counter elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


class Clock:
    """Elapsed ms between two marks: CUDA events on the GPU (read after a sync), perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


# ---------------------------------------------------------------------------- the target
def random_target(cfg: DecoderConfig, device: torch.device, dtype: torch.dtype, backend: str, autotune: bool,
                  graphs: bool, seed: int = 0, exact: bool = False, name: str = "tiny-random",
                  ranks: Ranks | None = None, split_keys: int | None = None, linear_chunk: int | None = None) -> DecoderTarget:
    """Our DecoderTarget with random weights allocated and initialised on `device` (no fp32 copy, no
    checkpoint): linear/embedding weights ~ N(0, 0.02), norm weights 1, biases 0. With `ranks`:
    this rank's slices of a tensor-parallel target (their values are random too). `split_keys`: the
    triton backend's keys per split-K range in exact mode (None: its default). `linear_chunk`: the exact
    projections' K chunks (the decoder's `linear_chunk` option; None: one)."""
    tp = 1 if ranks is None else ranks.world
    with torch.device("meta"):
        model = DecoderModel(cfg if tp == 1 else local_config(cfg, tp))
    model = model.to(dtype).to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    info = TargetInfo(
        name=name,
        architecture=cfg.architecture, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        max_positions=cfg.max_positions, dtype=dtype, device=device, eos_token_ids=cfg.eos_token_ids, exact=exact,
        tensor_parallel=tp,
    )
    if backend == "triton":
        from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions

        fixed = {} if split_keys is None else {"split_keys": split_keys}
        attention = TritonAttention(TritonAttentionOptions(autotune=autotune, **fixed), invariant=exact)
    else:
        from jetspec.kernels.reference import TorchAttention

        attention = TorchAttention()
    return DecoderTarget(model, attention, info, cuda_graphs=graphs, ranks=ranks, linear_chunk=linear_chunk)


def new_cache(target: DecoderTarget, kind: str, capacity: int, seed: int):
    if kind == "paged":
        from jetspec.caches.paged import PagedCacheOptions, PagedKVCache

        cache = PagedKVCache(target.info, capacity, PagedCacheOptions(page_size=16))
        random.Random(seed).shuffle(cache.allocator._free)  # a pool that has seen other sequences
        return cache
    from jetspec.caches.dense import DenseKVCache

    return DenseKVCache(target.info, capacity)


def fill(cache, info: TargetInfo, context: int, seed: int) -> None:
    """`context` committed tokens of random K/V, written through begin / write / commit."""
    g = torch.Generator(device=info.device).manual_seed(seed)
    cache.begin(context)
    for layer in range(info.num_layers):
        k, v = (torch.randn(context, info.kv_heads_here, info.head_dim, generator=g, device=info.device,
                            dtype=info.dtype) for _ in range(2))
        cache.write(layer, k, v)
    cache.commit(range(context))


def fresh_graphs(target: DecoderTarget) -> None:
    """Drop captured graphs (and the caches they keep alive); the next forward captures anew."""
    if target.graphs is not None:
        from jetspec.targets.decoder.graphs import CudaGraphForward

        target.graphs = CudaGraphForward(target.info.device)


def time_round(target: DecoderTarget, cache, context: int, nodes: int, clock: Clock, warmup: int, reps: int,
               seed: int) -> tuple[float, float]:
    """(time_ms, gpu_ms) medians for verifying a best-first tree of `nodes` nodes (1: a plain step)."""
    dev = target.info.device
    tree = best_first_tree(nodes, seed)
    meta = AttentionMeta.for_tree(tree, context, dev)
    tokens = torch.randint(0, target.info.vocab_size, (nodes,), generator=torch.Generator().manual_seed(seed)).to(dev)

    def one() -> None:
        cache.begin(nodes)  # discards the previous round's pending K/V: the context stays T
        target.forward(tokens, meta, cache)

    for _ in range(warmup):  # the first forward on this cache captures the graphs
        one()
    clock.sync()
    rounds = []
    for _ in range(reps):
        clock.sync()
        a = clock.mark()
        one()
        b = clock.mark()
        clock.sync()
        rounds.append(clock.ms(a, b))
    cache.begin(nodes)
    marks = [clock.mark()]
    for _ in range(reps):  # back to back: GPU work only (on a CPU this equals the above)
        target.forward(tokens, meta, cache)
        marks.append(clock.mark())
    clock.sync()
    gpu = [clock.ms(a, b) for a, b in zip(marks, marks[1:])]
    assert cache.committed == context
    return statistics.median(rounds), statistics.median(gpu)


def weight_params(model: DecoderModel) -> int:
    """Parameters a forward reads in full: all but the input embedding (a gather of N rows)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embed_tokens"))


def floors(cfg: DecoderConfig, params: int, context: int, nodes: int, elem: int, bandwidth: float, rate: float):
    """-> (bytes floor, matmul-FLOPs floor, attention-FLOPs floor) in ms."""
    kv = 2 * cfg.num_layers * (context + nodes) * cfg.num_kv_heads * cfg.head_dim * elem
    moved = params * elem + kv
    attn = 4 * cfg.num_layers * nodes * cfg.num_heads * (context + nodes) * cfg.head_dim
    return moved / bandwidth * 1e3, 2 * params * nodes / rate * 1e3, attn / rate * 1e3


def oneline(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/round_cost.jsonl")
    ap.add_argument("--tiny", action="store_true", help="2-layer random model, contexts 64/128, trees 1/16 (CI)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--contexts", type=int, nargs="+", help="default 1024 4096 16384 (tiny: 64 128)")
    ap.add_argument("--trees", type=int, nargs="+", help="default 1 16 64 128 256 (tiny: 1 16); 1 = plain step")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--autotune", action="store_true", help="Triton attention with autotune=True")
    ap.add_argument("--exact", nargs="+", choices=["on", "off"], default=["off"],
                    help="the target's exact mode(s), each a full sweep in this run (on: row-invariant kernels)")
    ap.add_argument("--model", choices=sorted(MODELS), default="qwen3-8b", help="the shape (ignored with --tiny)")
    ap.add_argument("--linear-chunk", type=int, default=None,
                    help="exact mode: the projections' K chunks (the decoder's linear_chunk option; default one chunk)")
    args = ap.parse_args(argv)
    with process_group() as ranks:  # torchrun: tensor parallel over its ranks; else None
        return sweep(args, ranks)


def sweep(args: argparse.Namespace, ranks: Ranks | None) -> int:
    start = time.time()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("round_cost: error: --device cuda but no CUDA device is available")
    if ranks is not None:
        device = ranks.device  # cuda:LOCAL_RANK under NCCL, cpu under gloo
    cuda = device.type == "cuda"
    cfg = TINY if args.tiny else MODELS[args.model]
    tp = 1 if ranks is None else ranks.world
    check_degree(cfg, tp, tp)
    local = local_config(cfg, tp)  # what one rank holds: its floors are per GPU
    leads = ranks is None or ranks.leads
    say = print if leads else (lambda *a, **k: None)
    name = "tiny-random" if args.tiny else f"{args.model}-random"
    launcher = f"torchrun --nproc-per-node {tp} -m" if tp > 1 else "python -m"
    contexts = args.contexts or ([64, 128] if args.tiny else [1024, 4096, 16384])
    trees = sorted(set(args.trees or ([1, 16] if args.tiny else [1, 16, 64, 128, 256])) | {1})
    dtype = torch.bfloat16 if cuda else torch.float32
    backend, kv = ("triton", "paged") if cuda else ("torch", "dense")
    stamp = dict(
        machine=f"{torch.cuda.get_device_name()} ({platform.node()})" if cuda else f"cpu {platform.processor() or platform.machine()} ({platform.node()})",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=f"{launcher} bench.round_cost " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        torch=torch.__version__,
        triton=getattr(__import__("triton"), "__version__", None) if cuda else None,
        model=name, tensor_parallel=tp, dtype=str(dtype).removeprefix("torch."),
        attention=backend + ("-autotune" if args.autotune and cuda else ""), kv_cache=kv, cuda_graphs=cuda,
    )
    if cuda:
        bandwidth = copy_bandwidth(device, 1 << (24 if args.tiny else 30))
        rate = matmul_rate(device, 1024 if args.tiny else 8192, dtype)
    else:
        bandwidth, rate = copy_bandwidth(device, 1 << 24), matmul_rate(device, 256, dtype)
    say(f"{stamp['machine']}: copy {bandwidth / 1e12:.2f} TB/s, {stamp['dtype']} matmul {rate / 1e12:.1f} TFLOP/s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    for mode in args.exact:
        t = time.time()
        exact = mode == "on"
        target = random_target(cfg, device, dtype, backend, args.autotune, graphs=cuda, exact=exact, name=name,
                               ranks=ranks, linear_chunk=args.linear_chunk)
        params = weight_params(target.model)
        elem = torch.empty((), dtype=dtype).element_size()
        say(f"exact = {exact}. {stamp['model']}: {params / 1e9:.3f} B weights read per forward (+ embedding), "
              f"made in {time.time() - t:.1f} s", flush=True)
        clock = Clock(device)
        taus = "  ".join(f"{'τ=' + format(x, 'g'):>6}" for x in TAUS)
        say(f"time = synchronised begin + forward (median of {args.reps}); gpu = the replay back to back; "
              f"ceiling = τ·T(1)/T(B), drafting excluded; floor = max(bytes, matmul + attention FLOPs)")
        say(f"{'context':>8} {'nodes':>5} {'time_ms':>8} {'gpu_ms':>8} {'ratio':>6} {'floor_ms':>8} {'%floor':>6}  "
              f"ceiling {taus}  note")
        for context in contexts:
            plain_ms = None
            cache = None
            try:
                fresh_graphs(target)
                cache = new_cache(target, kv, context + max(trees) + target.extra_pending, seed=context)
                fill(cache, target.info, context, seed=context)
                setup_error = None
            except Exception as e:  # noqa: BLE001 -- record and go on
                setup_error = oneline(e)
            for nodes in trees:
                bytes_ms, mm_ms, attn_ms = floors(local, params, context, nodes, elem, bandwidth, rate)
                floor_ms = max(bytes_ms, mm_ms + attn_ms)
                row = dict(context=context, nodes=nodes, time_ms=None, gpu_ms=None, plain_ms=plain_ms, ratio=None,
                           floor_ms=floor_ms, bytes_floor_ms=bytes_ms, matmul_floor_ms=mm_ms, attention_floor_ms=attn_ms,
                           weight_params=params, bandwidth_Bps=bandwidth, matmul_flops=rate, **stamp, exact=exact,
                           pdl=launch_options(device)["PDL"] if exact else None,
                           linear_chunk=args.linear_chunk if exact else None)
                try:
                    if setup_error:
                        raise RuntimeError(f"cache setup failed: {setup_error}")
                    row["time_ms"], row["gpu_ms"] = time_round(target, cache, context, nodes, clock, args.warmup,
                                                               args.reps, seed=nodes)
                    row["graphs_used"] = target.graphs is not None
                    if nodes == 1:
                        plain_ms = row["plain_ms"] = row["time_ms"]
                        row["plain_gpu_ms"] = row["gpu_ms"]
                    if plain_ms:
                        row["plain_ms"] = plain_ms
                        row["ratio"] = row["time_ms"] / plain_ms
                        row["ceiling"] = {format(x, "g"): x / row["ratio"] for x in TAUS}
                except Exception as e:  # noqa: BLE001 -- OOM, capture, ...: record and go on
                    row["error"] = oneline(e)
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                if leads:
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                nan = float("nan")
                tm, gm, r = row["time_ms"] or nan, row["gpu_ms"] or nan, row["ratio"] or nan
                ceil = "  ".join(f"{row['ceiling'][format(x, 'g')]:>6.2f}" if row.get("ceiling") else f"{'-':>6}" for x in TAUS)
                pct = 100 * floor_ms / tm if row["time_ms"] else nan
                say(f"{context:>8} {nodes:>5} {tm:>8.3f} {gm:>8.3f} {r:>6.2f} {floor_ms:>8.3f} {pct:>5.0f}%  "
                      f"        {ceil}  {row.get('error', '')}", flush=True)
            fresh_graphs(target)  # drops this context's graphs (they keep the cache alive) before the next
            del cache
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        del target
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    say(f"\nrows appended to {out}; {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    sys.exit(main())
