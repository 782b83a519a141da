"""The invariant projection kernel (`targets/decoder/invariant/linear.py`) at other tile shapes:
how fast each is, and whether a row keeps its bits (issue 18: skinny-M GEMMs that stay exact).

    python -m bench.linear_tiles --out bench/results/linear_tiles.jsonl           # the H200
    python -m bench.linear_tiles --models smollm2 --rows 1 --block-n 16 32        # fewer variants

For each projection of a model (SmolLM2-135M, Qwen3-8B; the decoder's fused forms: q/k/v with the
input norm, o with the residual, gate/up as swiglu with the norm, down with the residual, the
logits in float32 with the final norm), random weights, and M rows (1: a plain step; 64, 256: tree
verifications), every (BLOCK_N, BLOCK_K, warps, stages) asked for is launched with the tile rules'
BLOCK_M for M, then:

* time: µs per launch, CUDA-graph replays (`do_bench_cudagraph`, median), and % of the bytes
  floor (weights + x + y [+ residual] read or written once at the copy bandwidth of this run);
* bits: whether every row equals that row of the reference launch, the current rules' tiles at
  M = 256 (what a verification of 256 nodes computes). A variant that changes any bit cannot
  serve a plain step (exactness, core/invariant.py) whatever its speed.

`--block-m` tries row tiles other than the rules' (for M = 64, 256); `--prenorm` also times each
normed projection as two launches (the norm, then the projection without its prologue).

Prints one line per variant and, per (projection, M), the fastest variant whose bits hold beside
the current rules'. Rows go to --out (kind "linear_tile"). GPU only.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from jetspec.bench.rows import append_row, run_row
from jetspec.targets.decoder.invariant.rmsnorm import rmsnorm

from importlib import import_module

lin = import_module("jetspec.targets.decoder.invariant.linear")  # the module (the package re-exports its `linear` function)


@dataclass(frozen=True)
class Projection:
    name: str
    n: int  # output columns (swiglu: of each half)
    k: int
    form: str  # "norm" | "residual" | "swiglu" | "logits"


MODELS = {  # the decoder's projections, fused as it launches them
    "smollm2": (Projection("qkv", 9 * 64 + 2 * 3 * 64, 576, "norm"), Projection("o", 576, 576, "residual"),
                Projection("gate_up", 1536, 576, "swiglu"), Projection("down", 576, 1536, "residual"),
                Projection("logits", 49152, 576, "logits")),
    "qwen3-8b": (Projection("qkv", 32 * 128 + 2 * 8 * 128, 4096, "norm"), Projection("o", 4096, 4096, "residual"),
                 Projection("gate_up", 12288, 4096, "swiglu"), Projection("down", 4096, 12288, "residual"),
                 Projection("logits", 151936, 4096, "logits")),
}


def operands(p: Projection, m: int, device: str = "cuda") -> dict:
    """Random inputs of one projection at M rows (bf16; shapes as the decoder passes them)."""
    g = torch.Generator(device=device).manual_seed(p.n * 7 + p.k)
    w_rows = 2 * p.n if p.form == "swiglu" else p.n
    return dict(
        x=torch.randn(m, p.k, device=device, dtype=torch.bfloat16, generator=g),  # [M, K]
        w=torch.randn(w_rows, p.k, device=device, dtype=torch.bfloat16, generator=g) * 0.02,  # [N or 2N, K]
        r=torch.randn(m, p.n, device=device, dtype=torch.bfloat16, generator=g) if p.form == "residual" else None,  # [M, N]
        norm=torch.rand(p.k, device=device, dtype=torch.bfloat16, generator=g) + 0.5 if p.form in ("norm", "swiglu", "logits") else None,
        out=torch.float32 if p.form == "logits" else torch.bfloat16,
    )


def launcher(p: Projection, ops: dict, block_m: int, block_n: int, block_k: int, warps: int, stages: int,
             prenorm: bool = False, chunk: int | None = None, norm_unroll: int = 0):
    """() -> y [M, N]: one launch of the invariant kernel at these tiles, by the decoder's own `linear.launch`.
    prenorm: the norm as a launch of its own (`rmsnorm`) before a projection without the prologue — the
    same bits. chunk: K summed in chunks (`linear.k_chunks`; up to `linear.ACROSS_ROWS` rows each chunk a
    program). norm_unroll: the norm statistic's chunks in flight together (0: `rmsnorm.unroll`'s, as the decoder's)."""
    x, w, r, g = ops["x"], ops["w"], ops["r"], ops["norm"]
    tiles = lin.Tiles(block_m, block_n, block_k, warps, stages)
    norm = None if g is None or prenorm else (g, 1e-5)

    def run():
        xin = rmsnorm(x, g, 1e-5) if prenorm else x  # [M, K]
        return lin.launch(xin, w, None, ops["out"], r, norm, p.form == "swiglu", chunk, tiles=tiles, norm_unroll=norm_unroll)

    return run


def current(p: Projection, m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): what the decoder launches today."""
    t = lin.launch_tiles(m, p.n, p.k, p.form == "swiglu")
    return t.block_m, t.block_n, t.block_k, t.warps, t.stages


def floor_us(p: Projection, m: int, bandwidth: float) -> float:
    w_rows = 2 * p.n if p.form == "swiglu" else p.n
    nbytes = 2 * (w_rows * p.k + m * p.k) + m * p.n * (4 if p.form == "logits" else 2) + (2 * m * p.n if p.form == "residual" else 0)
    return nbytes / bandwidth * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rows", nargs="+", type=int, default=[1], help="M: rows per launch (1: a plain step)")
    ap.add_argument("--block-n", nargs="+", type=int, default=[16, 32, 64])
    ap.add_argument("--block-k", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--warps", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--stages", nargs="+", type=int, default=[4])
    ap.add_argument("--block-m", nargs="+", type=int, default=None, help="row tiles (default: the rules' for M)")
    ap.add_argument("--prenorm", action="store_true", help="also each tile with the norm as a launch of its own")
    ap.add_argument("--chunk", type=int, default=None,
                    help="K summed in chunks of this many (the decoder's linear_chunk), reference included; default one chunk")
    ap.add_argument("--norm-unroll", nargs="+", type=int, default=[0],
                    help="the norm statistic's chunks in flight together (0: the decoder's rule, `rmsnorm.unroll`; 1: one at a time)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("linear_tiles: needs a CUDA GPU (the tiles' speed and bits are the GPU's)")
    from triton.testing import do_bench_cudagraph

    from bench.kernel_bench import copy_bandwidth

    bandwidth = copy_bandwidth()
    stamp = run_row(shlex.join([sys.executable, *sys.argv]), {}) | {"kind": "linear_tile", "bandwidth": bandwidth,
                                                                   "dtype": "bfloat16"}  # x, W; the logits' y float32
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; reference = today's tiles at M = 256")
    bad_current = 0
    for model in args.models:
        for p in MODELS[model]:
            full = operands(p, 256)
            ref = launcher(p, full, *current(p, 256), chunk=args.chunk)().clone()  # [256, N]
            for m in args.rows:
                ops = full | {"x": full["x"][:m].contiguous(), "r": None if full["r"] is None else full["r"][:m].contiguous()}
                now = current(p, m)
                results = []
                prenorms = (False, True) if args.prenorm and ops["norm"] is not None else (False,)
                unrolls = args.norm_unroll if ops["norm"] is not None else [0]  # only a normed projection has the statistic
                for block_m, block_n, block_k, warps, stages, pre, nu in itertools.product(
                        args.block_m or [now[0]], args.block_n, args.block_k, args.warps, args.stages, prenorms, unrolls):
                    tiles = (block_m, block_n, block_k, warps, stages)
                    if block_k > triton.next_power_of_2(p.k) or block_m * block_n * block_k > 128 * 128 * 128 or (pre and nu):
                        continue
                    results.append(measure(p, ops, ref[:m], tiles, do_bench_cudagraph, pre, args.chunk, nu))
                if not any(r["tiles"] == now and not r["prenorm"] and not r["norm_unroll"] for r in results):
                    results.append(measure(p, ops, ref[:m], now, do_bench_cudagraph, False, args.chunk))
                fl = floor_us(p, m, bandwidth)
                for r in results:
                    r["is_current"] = r["tiles"] == now and not r["prenorm"] and not r["norm_unroll"]
                    row = stamp | dict(model=model, projection=p.name, n=p.n, k=p.k, form=p.form, rows=m, floor_us=fl,
                                       chunk=args.chunk, chunks=lin.k_chunks(p.k, args.chunk), **r)
                    if args.out:
                        append_row(args.out, row)
                    unrolled = f" norm_unroll {r['norm_unroll']}" if r["norm_unroll"] else ""
                    print(f"{model:>8} {p.name:>8} M{m:<4} tiles(M,N,K,w,s)={r['tiles']} "
                          f"{' prenorm' if r['prenorm'] else ''}{unrolled} {fmt(r['us'])} us {pct(fl, r['us'])} bits {'ok' if r['bits'] else 'DIFFER'}"
                          f"{' <- current' if r['is_current'] else ''}", flush=True)
                cur = next(r for r in results if r["is_current"])
                bad_current += not cur["bits"]
                ok = [r for r in results if r["bits"] and r["us"] is not None]
                best = min(ok, key=lambda r: r["us"]) if ok else None
                print(f"=> {model} {p.name} M{m}: current {cur['tiles']} {fmt(cur['us'])} us {pct(fl, cur['us'])}; best exact "
                      f"{best['tiles'] if best else None}{' prenorm' if best and best['prenorm'] else ''} {fmt(best['us'] if best else None)} us "
                      f"{pct(fl, best['us'] if best else None)}; floor {fl:.1f} us", flush=True)
    sys.exit(1 if bad_current else 0)  # today's tiles must keep a row's bits


def measure(p: Projection, ops: dict, ref: torch.Tensor, tiles: tuple, do_bench_cudagraph, prenorm: bool,
            chunk: int | None = None, norm_unroll: int = 0) -> dict:
    run = launcher(p, ops, *tiles, prenorm=prenorm, chunk=chunk, norm_unroll=norm_unroll)
    try:
        y = run()
        torch.cuda.synchronize()
        bits = bool(torch.equal(y, ref))
        us = do_bench_cudagraph(run, rep=50, return_mode="median") * 1e3
    except Exception as e:  # a tile the compiler refuses (shared memory, layout): recorded, not fatal
        torch.cuda.synchronize()
        return dict(tiles=tiles, prenorm=prenorm, norm_unroll=norm_unroll, us=None, bits=False,
                    error=f"{type(e).__name__}: {str(e)[:160]}")
    return dict(tiles=tiles, prenorm=prenorm, norm_unroll=norm_unroll, us=us, bits=bits)


def fmt(us: float | None) -> str:
    return f"{us:7.2f}" if us is not None else "  error"


def pct(floor: float, us: float | None) -> str:
    return f"{100 * floor / us:5.1f}%" if us else "    -"


if __name__ == "__main__":
    main()
