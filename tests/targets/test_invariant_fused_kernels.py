"""The fused row-invariant kernels of `exact = true` (jetspec/targets/decoder/invariant/):

* each computes its unfused composition — `TorchOps`, torch's kernels one step at a time — within
  rounding tolerance, and in float32 bit for bit where the composition has no reduction of its
  own (the epilogues after our own projection, RoPE, the write). Not so in bf16 here: Triton's
  interpreter rounds float32 -> bf16 toward zero where torch and the GPU round to nearest even;
* the norm prologue is our own `rmsnorm` then our own projection bit for bit, in bf16 too (both
  sides round through the same casts), and `rmsnorm` reduces its statistic in the order written
  in rmsnorm.py — fixed by the row length, whatever the tile;
* each is row-invariant: row r of an M-row launch is bit for bit the 1-row launch of row r alone,
  for several M (the property `exact = true` rests on, `jetspec.core.invariant`).

On this CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
# The float32 compositions are bitwise only where torch and the kernel round alike: in the interpreter
# (numpy). Compiled for a GPU, fp contraction may fuse a multiply-add that torch rounds twice; there the
# decoder-level bitwise property (test_exact_gpu.py) and bench/linear_tiles.py (every tile vs a 256-row launch, bit for bit) check these kernels.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="kernel compositions on CPU tensors in Triton's interpreter; "
                                "on a GPU see tests/targets/test_exact_gpu.py")

from jetspec.core.interfaces import AttentionMeta  # noqa: E402
from jetspec.core.invariant import block_k, prefetch_lines  # noqa: E402
from jetspec.targets.decoder import invariant  # noqa: E402
from jetspec.targets.decoder.ops import TorchOps  # noqa: E402

ROWS = (1, 2, 7, 16, 33)  # within one row tile, a full one, across tiles
DTYPES = (torch.float32, torch.bfloat16)
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=0.15, rtol=2e-2)}  # against torch


def rand(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def assert_composition(got: torch.Tensor, want: torch.Tensor, exact: bool = True) -> None:
    """float32: bit for bit (or within 1e-6 where `exact` is False: numpy's exp against torch's);
    bf16: a few roundings apart (the interpreter's casts), i.e. within 4 bf16 steps of the largest value."""
    if got.dtype == torch.float32:
        if exact:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    else:
        torch.testing.assert_close(got.float(), want.float(), atol=4 * 2**-8 * want.abs().max().item(), rtol=0)


def f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def assert_rows_invariant(run, m: int):
    """run(rows: slice) -> output [rows, ...]: every row of the m-row launch equals its 1-row launch."""
    full = run(slice(0, m))
    for r in range(m):
        one = run(slice(r, r + 1))
        assert torch.equal(full[r : r + 1], one), f"row {r} of {m} differs from its 1-row launch"


# ---------------------------------------------------------------------------- linear epilogues
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_residual_epilogue_is_linear_then_add(dtype, bias):
    m, n, k = 33, 40, 72
    x, w, r = rand(m, k, dtype=dtype, seed=0), rand(n, k, dtype=dtype, seed=1, scale=0.1), rand(m, n, dtype=dtype, seed=2)
    b = rand(n, dtype=dtype, seed=3) if bias else None
    fused = invariant.linear(x, w, b, residual=r)  # [M, N]
    assert_composition(fused, r + invariant.linear(x, w, b))  # rounds where the composition rounds
    torch.testing.assert_close(fused.float(), TorchOps().linear(x.float(), w.float(), f32(b), r.float()),
                               **TOL[dtype])
    for rows in ROWS:
        assert_rows_invariant(lambda s: invariant.linear(x[s], w, b, residual=r[s]), rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_is_silu_of_gate_times_up(dtype, bias):
    m, i, k = 33, 24, 40  # I = 24: a partial column tile
    x, w = rand(m, k, dtype=dtype, seed=4), rand(2 * i, k, dtype=dtype, seed=5, scale=0.3)
    b = rand(2 * i, dtype=dtype, seed=6) if bias else None
    fused = invariant.swiglu(x, w, b)  # [M, I]
    g, u = invariant.linear(x, w, b).chunk(2, dim=-1)  # our own projection, then torch's silu * u
    assert_composition(fused, F.silu(g) * u, exact=False)
    torch.testing.assert_close(fused.float(), TorchOps().swiglu(x.float(), w.float(), f32(b)), **TOL[dtype])
    for rows in ROWS:
        assert_rows_invariant(lambda s: invariant.swiglu(x[s], w, b), rows)


# ---------------------------------------------------------------------------- the norm prologue
def sum_squares_spec(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32 -> [M, 1]: sum of x^2 in rmsnorm.py's order, written in torch: lanes over
    block_k(K) chunks from 0 up, then a pairwise tree over the lanes, neighbours first."""
    m, k = x.shape
    bk = block_k(k)
    chunks = F.pad(x, (0, -k % bk)).view(m, -1, bk)  # [M, chunks, BK]
    lanes = torch.zeros(m, bk)
    for c in range(chunks.shape[1]):
        lanes = lanes + chunks[:, c] * chunks[:, c]
    while lanes.shape[1] > 1:
        lanes = lanes[:, 0::2] + lanes[:, 1::2]
    return lanes


@pytest.mark.parametrize("k", [64, 200, 576])  # one chunk; a full and a partial one; SmolLM2's hidden size
def test_rmsnorm_reduces_its_statistic_in_the_order_fixed_by_the_row_length(k):
    x, g, eps = rand(33, k, dtype=torch.float32, seed=11, scale=3.0) + 1.0, rand(k, dtype=torch.float32, seed=12), 1e-5
    # float32, every op rounded once; the square root correctly rounded (as numpy's, the interpreter's:
    # torch's float32 sqrt on the CPU is not always)
    want = g * (x / torch.sqrt((sum_squares_spec(x) / k + eps).double()).float())
    assert torch.equal(invariant.rmsnorm(x, g, eps), want)
    for dtype in DTYPES:
        xd, gd = x.to(dtype), g.to(dtype)
        torch.testing.assert_close(invariant.rmsnorm(xd, gd, eps).float(), TorchOps().rmsnorm(xd, gd, eps).float(),
                                   **TOL[dtype])
    for rows in ROWS:
        assert_rows_invariant(lambda s: invariant.rmsnorm(x[s], g, eps), rows)


NORMED = {  # the decoder's normed projections: (ours with the norm as prologue, torch's composition)
    "qkv": (lambda x, w, b, norm: invariant.linear(x, w, b, norm=norm),
            lambda x, w, b, norm: TorchOps().linear(x, w, b, norm=norm)),
    "gate_up": (lambda x, w, b, norm: invariant.swiglu(x, w, b, norm=norm),
                lambda x, w, b, norm: TorchOps().swiglu(x, w, b, norm=norm)),
    "logits": (lambda x, w, b, norm: invariant.linear(x, w, b, out_dtype=torch.float32, norm=norm),
               lambda x, w, b, norm: TorchOps().logits(x, w, norm=norm)),
}


def normed_inputs(form, dtype, bias, m=33, n=40, k=200):
    """x [M, K] (rows of different scales), W [N, K] (2N for gate_up), b or None, norm (g [K], eps)."""
    x = rand(m, k, dtype=torch.float32, seed=13, scale=2.0) * torch.linspace(0.1, 10, m)[:, None]
    w = rand(2 * n if form == "gate_up" else n, k, dtype=dtype, seed=14, scale=0.1)
    b = rand(w.shape[0], dtype=dtype, seed=15) if bias and form != "logits" else None
    return x.to(dtype), w, b, (rand(k, dtype=dtype, seed=16).abs() + 0.5, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("form", sorted(NORMED))
def test_norm_prologue_is_rmsnorm_then_the_projection(dtype, bias, form):
    ours, torchs = NORMED[form]
    x, w, b, norm = normed_inputs(form, dtype, bias)
    fused = ours(x, w, b, norm)
    assert torch.equal(fused, ours(invariant.rmsnorm(x, *norm), w, b, None))  # bf16 too: the same casts on both sides
    if dtype == torch.float32:  # against torch's composition (its sum orders, rsqrt): in bf16 the interpreter's
        # six roundings toward zero in a row (norm, scale, g, u, silu, product) drift past TOL; there the
        # bitwise line above and each part's own test against torch (rmsnorm, linear, swiglu) carry it
        torch.testing.assert_close(fused, torchs(x, w, b, norm), **TOL[dtype])
    for rows in ROWS:
        assert_rows_invariant(lambda s: ours(x[s], w, b, norm), rows)


@pytest.mark.parametrize("form", sorted(NORMED))
def test_norm_prologue_bits_do_not_depend_on_the_tile(form, monkeypatch):
    """The row and column tiles follow M on a GPU (`launch_tiles`); a row's statistic and dot products
    are reduced over K alone. Forced tiles — 16 to 128 rows, narrow and wide columns — give the same bits
    (the chunk BLOCK_K stays block_k(K) here: the interpreter sums a chunk before adding it)."""
    ours, _ = NORMED[form]
    x, w, b, norm = normed_inputs(form, torch.bfloat16, True, m=70)
    want = ours(x, w, b, norm)
    linear_module = importlib.import_module("jetspec.targets.decoder.invariant.linear")
    for block_m, block_n in ((32, 16), (64, 64), (128, 32)):
        forced = linear_module.Tiles(block_m, block_n, block_k(x.shape[-1]), 4, 4)
        monkeypatch.setattr(linear_module, "_tiles", lambda *_, t=forced: t)  # what `_launch` asks
        assert torch.equal(ours(x, w, b, norm), want), (block_m, block_n)


def test_a_plain_step_loads_the_statistics_chunks_together_and_asks_l2_for_its_weights_trees_do_not():
    """The one-row rules (linear.py's docstring): chunks of the one row in flight as 64 registers a thread
    hold — all of SmolLM2's 9 and of Qwen3-8B's 32; a weight prefetch only for an early launch of one row."""
    rmsnorm_module = importlib.import_module("jetspec.targets.decoder.invariant.rmsnorm")
    assert [rmsnorm_module.unroll(576, 64, 4, rows) for rows in (1, 2, 64)] == [9, 1, 1]  # SmolLM2
    assert rmsnorm_module.unroll(4096, 128, 2, 1) == 32  # Qwen3-8B, tiles of 2 warps
    assert rmsnorm_module.unroll(16384, 128, 2, 1) == 64  # past 64 registers a thread: 64 of 128 chunks at a time
    w = torch.zeros(960, 576, dtype=torch.bfloat16)
    early, in_turn = {"launch_pdl": True}, {"launch_pdl": False}
    assert prefetch_lines(early, 576, w, 1) == (16, 64)  # 9 lines of 64 elements a row, rounded up
    assert [prefetch_lines(o, 576, w, rows)[0] for o, rows in ((early, 2), (in_turn, 1))] == [0, 0]


@pytest.mark.parametrize("form", sorted(NORMED))
def test_a_one_row_launchs_statistic_loaded_in_flight_together_keeps_the_bits_of_a_tree_rows(form):
    """SmolLM2's 576 features (5 chunks in the interpreter, loaded 4 at a time in a float32 one-row launch, one at a
    time in a tree's): row r alone is bit for bit row r of the 33-row launch."""
    ours, _ = NORMED[form]
    x, w, b, norm = normed_inputs(form, torch.float32, True, k=576)
    assert_rows_invariant(lambda s: ours(x[s], w, b, norm), 33)


# ---------------------------------------------------------------------------- rope + K/V write
class Pool:
    """The slice of a paged (or dense) cache the write sees: k, v [L, pages, P, Hkv, D], a
    slot_table (logical -> row; None for a dense cache), `write` as the caches do it."""

    def __init__(self, hkv, d, dtype, slots: bool, seed: int, rows: int = 64):
        self.k = torch.zeros(2, rows // 8, 8, hkv, d, dtype=dtype)  # [L, pages, P, Hkv, D]
        self.v = torch.zeros_like(self.k)
        perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).to(torch.int32)
        self.slot_table = perm if slots else None  # [rows] int32
        self.prefix = 0

    def write(self, layer, k, v):  # the caches' write: pending token j -> row slot(T + j)
        t = torch.arange(self.prefix, self.prefix + k.shape[0])
        rows = (self.slot_table[t] if self.slot_table is not None else t).long()
        self.k[layer].view(-1, *self.k.shape[-2:])[rows] = k
        self.v[layer].view(-1, *self.v.shape[-2:])[rows] = v


def rope_inputs(n, hq, hkv, d, dtype, seed):
    qkv = rand(n, (hq + 2 * hkv) * d, dtype=dtype, seed=seed, scale=2.0)  # [N, (Hq + 2 Hkv) D]
    angles = rand(n, 1, d // 2, dtype=torch.float32, seed=seed + 1, scale=3.0).repeat(1, 1, 2)  # [N, 1, D]
    norms = (rand(d, dtype=dtype, seed=seed + 2).abs() + 0.5, rand(d, dtype=dtype, seed=seed + 3).abs() + 0.5, 1e-6)
    return qkv, angles.cos().to(dtype), angles.sin().to(dtype), norms


def fused_rope(pool, layer, qkv, heads, cos, sin, qk_norm, prefix):
    pool.prefix = prefix
    hq, hkv, _ = heads
    q_w, k_w, eps = qk_norm if qk_norm is not None else (None, None, 0.0)
    rows = lambda t: t[layer].view(-1, *t.shape[-2:])  # noqa: E731  [R, Hkv, D]
    return invariant.rope_write(qkv, hq, hkv, cos, sin, q_w, k_w, eps, rows(pool.k), rows(pool.v), pool.slot_table,
                                torch.tensor([prefix], dtype=torch.int32))


GEOMETRIES = [(4, 2, 16), (9, 3, 64), (6, 2, 24)]  # GQA 2 / 3 (SmolLM2's heads) / a head dim that is no power of 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3-norm"])
@pytest.mark.parametrize("slots", [True, False], ids=["paged", "dense"])
@pytest.mark.parametrize("heads", GEOMETRIES, ids=lambda h: f"hq{h[0]}-hkv{h[1]}-d{h[2]}")
def test_rope_write_is_norm_rope_and_cache_write(dtype, qk_norm, slots, heads):
    n, prefix = 7, 5
    qkv, cos, sin, norms = rope_inputs(n, *heads, dtype, seed=7)
    norms = norms if qk_norm else None
    fused, ref = Pool(heads[1], heads[2], dtype, slots, seed=8), Pool(heads[1], heads[2], dtype, slots, seed=8)
    q = fused_rope(fused, 1, qkv, heads, cos, sin, norms, prefix)
    ref.prefix = prefix
    meta = AttentionMeta.for_chain(n, prefix)
    q_ref = TorchOps().rope_write(qkv, heads, cos, sin, norms, ref, 1, meta)
    for got, want in ((q, q_ref), (fused.k, ref.k)):
        if qk_norm:  # the norm: a sum in another order, a quotient where torch multiplies by rsqrt
            torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
        else:  # rope rounds where apply_rope rounds
            assert_composition(got, want)
    assert torch.equal(fused.v, ref.v)  # v is copied, never rounded
    assert not fused.k[0].any() and not fused.v[0].any()  # other layers untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3-norm"])
def test_rope_write_is_row_invariant(dtype, qk_norm):
    heads, prefix = (6, 2, 24), 3
    qkv, cos, sin, norms = rope_inputs(max(ROWS), *heads, dtype, seed=9)
    norms = norms if qk_norm else None
    for m in ROWS:
        full = Pool(heads[1], heads[2], dtype, True, seed=10)
        q = fused_rope(full, 0, qkv[:m], heads, cos[:m], sin[:m], norms, prefix)
        for r in range(m):  # token r alone, as a 1-token forward at T + r: same q, same pool row
            one = Pool(heads[1], heads[2], dtype, True, seed=10)
            q_one = fused_rope(one, 0, qkv[r : r + 1], heads, cos[r : r + 1], sin[r : r + 1], norms, prefix + r)
            assert torch.equal(q[r : r + 1], q_one), (m, r)
            row = int(one.slot_table[prefix + r])
            for a, b in ((full.k, one.k), (full.v, one.v)):
                assert torch.equal(a[0].view(-1, *a.shape[-2:])[row], b[0].view(-1, *b.shape[-2:])[row]), (m, r)


# ---------------------------------------------------------------------------- K in chunks (`linear_chunk`)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["linear", "residual", "swiglu", "norm"])
def test_k_summed_in_chunks_keeps_each_rows_bits_whatever_the_rows(dtype, form):
    """K = 1024 in four 256-wide chunks: up to 16 rows each chunk is a program of its own (the last to
    arrive adds them), past 16 a program adds them in turn; a row's bits are its 1-row launch's either
    way, and the result is the projection within rounding tolerance."""
    m, n, k = 33, 40, 1024
    x, w, r = rand(m, k, dtype=dtype, seed=7), rand(2 * n, k, dtype=dtype, seed=8, scale=0.05), rand(m, n, dtype=dtype, seed=9)
    g = rand(k, dtype=dtype, seed=10, scale=0.1) + 1.0
    run = {
        "linear": lambda s, c: invariant.linear(x[s], w[:n], chunk=c),
        "residual": lambda s, c: invariant.linear(x[s], w[:n], residual=r[s], chunk=c),
        "swiglu": lambda s, c: invariant.swiglu(x[s], w, chunk=c),
        "norm": lambda s, c: invariant.linear(x[s], w[:n], norm=(g, 1e-6), chunk=c),
    }[form]
    for rows in ROWS:
        assert_rows_invariant(lambda s: run(s, 256), rows)
    torch.testing.assert_close(run(slice(0, m), 256).float(), run(slice(0, m), None).float(), **TOL[dtype])


def test_k_chunks_are_a_reduction_order_of_their_own():
    """In float32 the chunked sum (P_0 + P_1) + ... differs from the one-chunk sum somewhere: the option is
    part of the model's numerics (one value per model), and a K its chunk does not divide is one chunk."""
    from jetspec.targets.decoder.invariant.linear import k_chunks

    x, w = rand(16, 1024, dtype=torch.float32, seed=11), rand(64, 1024, dtype=torch.float32, seed=12)
    assert not torch.equal(invariant.linear(x, w, chunk=256), invariant.linear(x, w))
    assert (k_chunks(1024, 256), k_chunks(1024, 1024), k_chunks(1000, 256), k_chunks(576, None)) == (4, 1, 1, 1)
    assert torch.equal(invariant.linear(x[:, :1000], w[:, :1000], chunk=256), invariant.linear(x[:, :1000], w[:, :1000]))


def test_a_chunked_launch_leaves_its_arrival_counters_zeroed_for_the_next():
    """The last of a tile's chunk programs adds the chunks and resets the tile's counter, so the next launch
    (a CUDA-graph replay, another shape) starts from zero and adds its own chunks only."""
    from jetspec.core import invariant as rule

    x, w = rand(3, 512, dtype=torch.float32, seed=13), rand(48, 512, dtype=torch.float32, seed=14)
    first = invariant.linear(x, w, chunk=128)
    for rows, n in ((1, 48), (3, 16), (3, 48)):
        invariant.linear(x[:rows], w[:n], chunk=128)
        assert int(rule._COUNTERS[x.device].abs().sum()) == 0
    assert torch.equal(invariant.linear(x, w, chunk=128), first)
