"""The q/k/v projection with RoPE and the K/V write in one kernel (`invariant/qkv_rope.py`):

* it is `rope_write(linear(x, Wqkv, b, norm=))` — the two kernels it replaces — bit for bit, q and
  every pool row it writes, in float32 and bf16 (both sides round through the same casts), with and
  without a bias and the norm prologue, into paged, dense and packed-batch (per-row, pads -1) pools;
* whatever its tiles (which follow M on a GPU): forced row and pair tiles give the same bits;
* the decoder launches it for a model without a q/k norm, and its logits are those of the two-kernel
  form bit for bit; a model with a q/k norm (Qwen3) keeps the two kernels.

On this CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="kernels on CPU tensors in Triton's interpreter; "
                                "on a GPU see tests/targets/test_exact_gpu.py")

from jetspec.core.interfaces import AttentionMeta  # noqa: E402
from jetspec.targets.decoder import invariant  # noqa: E402
from jetspec.testing.exactness import paged_cache  # noqa: E402
from support.hf_checkpoints import exact_and_fast_targets  # noqa: E402

qkv_rope = importlib.import_module("jetspec.targets.decoder.invariant.qkv_rope")
GEOMETRIES = [(4, 2, 16), (9, 3, 64), (6, 2, 24)]  # (Hq, Hkv, D): GQA 2 / SmolLM2's 9 / 3 / a head dim no power of 2


def rand(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def inputs(n, hq, hkv, d, dtype, bias: bool, seed=3, k=48):
    x = rand(n, k, dtype=dtype, seed=seed)  # [N, K]
    w = rand((hq + 2 * hkv) * d, k, dtype=dtype, seed=seed + 1, scale=0.2)  # [(Hq + 2 Hkv) D, K]
    b = rand((hq + 2 * hkv) * d, dtype=dtype, seed=seed + 2) if bias else None
    norm = (rand(k, dtype=dtype, seed=seed + 3, scale=0.1) + 1.0, 1e-6)
    angles = rand(n, 1, d, dtype=torch.float32, seed=seed + 4, scale=3.0)  # [N, 1, D] (any table: not only RoPE's two halves alike)
    return x, w, b, norm, angles.cos().to(dtype), angles.sin().to(dtype)


def pool(hkv, d, dtype, rows=96):
    """A layer's K and V pool rows [R, Hkv, D], filled with a marker (an unwritten row keeps it)."""
    return torch.full((rows, hkv, d), 7.0, dtype=dtype), torch.full((rows, hkv, d), -7.0, dtype=dtype)


def where_to(kind: str, n: int, prefix: int = 5):
    """(slots, prefix, rows) of a paged pool (a slot table), a dense one (row = logical slot), or a
    packed batch's rows (each token's own row; -1: a graph's pad row, written nowhere)."""
    t = torch.tensor([prefix], dtype=torch.int32)
    if kind == "paged":
        return torch.randperm(96, generator=torch.Generator().manual_seed(11)).to(torch.int32), t, None
    if kind == "dense":
        return None, t, None
    rows = 1 + torch.randperm(95, generator=torch.Generator().manual_seed(12))[:n].to(torch.int32)  # never row 0:
    rows[1::3] = -1  # where a pad clamped to row 0 would write
    return None, None, rows


def both(n, heads, dtype, bias, normed, kind):
    """(one kernel, two kernels): each (q, k pool, v pool) from the same inputs."""
    hq, hkv, d = heads
    x, w, b, norm, cos, sin = inputs(n, hq, hkv, d, dtype, bias)
    norm = norm if normed else None
    slots, prefix, rows = where_to(kind, n)
    one_k, one_v = pool(hkv, d, dtype)
    q_one = invariant.qkv_rope_write(x, w, b, norm, hq, hkv, cos, sin, one_k, one_v, slots, prefix, rows)
    two_k, two_v = pool(hkv, d, dtype)
    qkv = invariant.linear(x, w, b, norm=norm)  # [N, (Hq + 2 Hkv) D]
    q_two = invariant.rope_write(qkv, hq, hkv, cos, sin, None, None, 0.0, two_k, two_v, slots, prefix, rows)
    return (q_one, one_k, one_v), (q_two, two_k, two_v)


@pytest.mark.parametrize("kind", ["paged", "dense", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", GEOMETRIES, ids=lambda h: f"hq{h[0]}-hkv{h[1]}-d{h[2]}")
def test_one_kernel_is_the_projection_then_rope_write_bit_for_bit(heads, dtype, kind):
    for bias, normed in ((True, True), (False, False)):
        one, two = both(7, heads, dtype, bias, normed, kind)
        for name, got, want in zip(("q", "k pool", "v pool"), one, two):
            assert torch.equal(got, want), (name, bias, normed)
    assert (one[1] == 7.0).any() and (one[1] != 7.0).any()  # some rows written, the others untouched


def test_pad_rows_of_a_packed_batch_are_written_nowhere():
    heads = (4, 2, 16)
    (q, k, v), _ = both(7, heads, torch.float32, True, True, "packed")
    _, _, rows = where_to("packed", 7)
    written = {int(r) for r in rows if r >= 0}
    for r in range(96):
        assert bool((k[r] != 7.0).all()) == (r in written) and bool((v[r] != -7.0).all()) == (r in written), r


@pytest.mark.parametrize("tiles", [(16, 16), (32, 64), (64, 16), (128, 32)])
def test_bits_do_not_depend_on_the_tiles(tiles, monkeypatch):
    """The row tile and the pairs a program takes (they follow M on a GPU, `pair_tiles`) change no bit:
    each element is summed over K alone, and a tile may span heads (D = 16: 8 pairs a head)."""
    heads, n = (4, 2, 16), 70
    want = both(n, heads, torch.bfloat16, True, True, "paged")[0]
    block_m, block_p = tiles
    monkeypatch.setattr(qkv_rope, "pair_tiles", lambda m, n_, k, d: (block_m, block_p, 16, 4, 2))
    got = both(n, heads, torch.bfloat16, True, True, "paged")[0]
    for a, b in zip(got, want):
        assert torch.equal(a, b), tiles


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return exact_and_fast_targets(tmp_path_factory, seed=2)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_the_decoder_launches_one_kernel_without_a_qk_norm_and_keeps_its_bits(targets, family, monkeypatch):
    """Llama (no q/k norm): one q/k/v + RoPE + write kernel a layer; Qwen3 (a q/k norm): the projection
    then rope_write. A forward's logits and the K/V it writes are the two-kernel form's bit for bit."""
    target, _ = targets(family, "bfloat16", 64)
    calls = {"qkv_rope_write": 0, "rope_write": 0}
    for name in calls:
        monkeypatch.setattr(invariant, name, counted(getattr(invariant, name), calls, name))
    context = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]

    def forward():
        cache = paged_cache(target, 64, "gather")
        cache.begin(len(context))
        out = target.forward(torch.tensor(context), AttentionMeta.for_chain(len(context), 0), cache)
        return out.logits, cache

    one, one_cache = forward()
    layers = target.cfg.num_layers
    assert calls == ({"qkv_rope_write": layers, "rope_write": 0} if family == "llama" else {"qkv_rope_write": 0, "rope_write": layers})
    monkeypatch.setattr(invariant, "k_chunks", lambda k, chunk: 2)  # what sends every layer to the two kernels
    two, two_cache = forward()
    assert torch.equal(one, two)
    assert torch.equal(one_cache.k, two_cache.k) and torch.equal(one_cache.v, two_cache.v)
    assert calls["rope_write"] == layers * (2 if family == "qwen3" else 1)


def counted(real, calls: dict, name: str):
    def call(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)
    return call
