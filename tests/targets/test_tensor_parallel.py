"""Tensor parallelism (`tensor_parallel = 2`), two gloo ranks on the CPU, fp32:

* the split model computes the one-process model: logits and hidden states within fp32 rounding
  of the sum order, bit for bit the same on both ranks, and bit for bit the one process's where
  the split sums are exact; each rank's cache holds half the KV heads;
* speculative decoding over it is lossless: greedy output equals plain decoding's, at TP = 2 and
  in one process alike, and an unseeded sampling verifier (fresh entropy on every rank) still
  leaves both ranks with rank 0's tokens;
* a degree that does not split the model, or does not match the process group, is a one-line error.

Why not bit for bit against one process: a row-parallel projection (o_proj, down_proj) is a GEMM
whose K reduction is cut in two: rank r sums its I/2 products, the all-reduce adds the two
halves. One process sums all I products in the BLAS kernel's own blocking, so the two round
differently (ulps: |diff| <= 1e-5 relative to the largest logit here, measured ~1e-6); so does
an elementwise SiLU·mul whose row length leaves a different scalar tail after the CPU's vector
loop (112 vs 56 lanes). Remove both (`exact_sums`) and the numbers are exactly the one process's.
What must be exact always is: both ranks hold the same bits (a + b = b + a), and the greedy tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from jetspec.core.errors import ConfigError
from jetspec.kernels.reference import TorchAttention
from jetspec.targets.decoder import DecoderConfig, DecoderTargetOptions, load_decoder_target
from jetspec.targets.decoder.parallel import allowed_degrees, local_config, shard
from support.hf_checkpoints import FAMILIES as HF_FAMILIES
from support.hf_checkpoints import random_hf_model
from support.hf_folder import save_tiny_hf_folder
from support.ranks import decode_and_bench, decoder_logits, distributed_available, on_ranks, several, speculative_and_plain

needs_gloo = pytest.mark.skipif(not distributed_available(), reason="torch.distributed with gloo is not available")

TREE = ([5, 7, 9, 11, 13, 17, 19], [-1, 0, 0, 1, 1, 2, 5])  # tokens, parents: branches at the root and at depth 1
PROMPT = list(range(20, 44))
REP = [40, 41, 42, 43, 40, 41, 42, 43, 40, 41]  # repeats: the n-gram drafter gets drafts accepted
PROMPTS = [REP, [50, 60, 50, 60, 50, 60, 70], list(range(30, 38))]


FAMILIES = ("llama-llama3", "qwen2", "qwen3")  # o/MLP biases (added once), q/k/v biases, q/k norms


def exact_sums(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with one weight of ±1/2 per output row of every o_proj and down_proj: each output
    of a row-parallel projection is then one exact product plus zeros, whatever the split of its
    sum over the ranks and the order of the all-reduce."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                rows, cols = proj.weight.shape
                w = torch.zeros(rows, cols)
                w[torch.arange(rows), torch.randint(0, cols, (rows,), generator=g)] = 0.5 - torch.randint(0, 2, (rows,), generator=g)
                proj.weight.copy_(w)
    return model


@pytest.fixture(scope="module")
def spawned(tiny_checkpoint, tmp_path_factory):
    """Everything this module asks of two ranks, in one spawn: `decoder_logits` at TP = 2 over
    the random checkpoints and their `exact_sums` twins (MLP width 128: each rank's 64 SiLU·mul
    lanes fill whole CPU vectors, as the one process's 128 do, so no element is rounded by a
    vector loop's scalar tail on one side only), then `decode_and_bench` on a tokenized model;
    and the same in one process -> (one process, (rank 0, rank 1)) per workload."""
    root = tmp_path_factory.mktemp("tp")
    folders = [str(tiny_checkpoint(f)[0]) for f in FAMILIES]
    for family in FAMILIES:
        cls, fields = HF_FAMILIES[family]
        exact_sums(random_hf_model(cls, dict(fields, intermediate_size=128))).save_pretrained(root / family)
        folders.append(str(root / family))
    model = str(save_tiny_hf_folder(root / "model", seed=3))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"say {i} {i} {i}"}) + "\n" for i in range(3)))
    calls = [(decoder_logits, (folders, 2, PROMPT, TREE, "paged")),
             (decode_and_bench, (model, PROMPTS, 6, 24, str(prompts), str(root / "bench")))]
    r0, r1 = on_ranks(several, 2, calls)
    one = (decoder_logits(0, folders, 1, PROMPT, TREE, "dense"), speculative_and_plain(0, model, 1, PROMPTS, 6, 24))
    return {"logits": list(zip(one[0], r0[0], r1[0])), "decode": (one[1], (r0[1], r1[1]))}


@pytest.fixture(scope="module")
def logits(spawned):
    """Per checkpoint, (one process, rank 0, rank 1) outputs of `decoder_logits`: the random
    checkpoints of FAMILIES, then their `exact_sums` twins."""
    return spawned["logits"]


@needs_gloo
@pytest.mark.parametrize("i", range(len(FAMILIES)), ids=FAMILIES)
def test_two_ranks_compute_the_one_process_logits(logits, i):
    one, r0, r1 = logits[i]
    for key in ("prefill", "tree", "hidden"):
        assert torch.equal(r0[key], r1[key]), f"the ranks' {key} differ"
        scale = one[key].abs().max().item()
        diff = (r0[key] - one[key]).abs().max().item()
        assert diff <= 1e-5 * scale, f"{key}: |TP - one process| = {diff:.3g} (scale {scale:.3g})"
    assert torch.equal(r0["tree"].argmax(-1), one["tree"].argmax(-1))
    assert one["kv_heads"] == 2 and r0["kv_heads"] == r1["kv_heads"] == 1  # each rank caches its own KV head
    assert r0["fingerprint"] == one["fingerprint"]  # a head trained on the whole model fits the split one


@needs_gloo
@pytest.mark.skipif(torch.cuda.is_available(), reason="bit-exactness rests on the CPU kernels here; cuBLAS picks its "
                                                      "tiling (and split-K) by shape, so column slices may round otherwise")
@pytest.mark.parametrize("i", range(len(FAMILIES)), ids=FAMILIES)
def test_where_the_split_sums_are_exact_the_logits_are_bit_for_bit_the_same(logits, i):
    """Sharding itself (heads, KV heads and their cache, column slices, biases added once, the
    replicated LM head) changes no bit: with the split sums made exact (`exact_sums`), TP = 2
    gives the one-process logits and hidden states exactly. So the tolerance above is the
    split-sum rounding and nothing else."""
    one, r0, _ = logits[len(FAMILIES) + i]
    for key in ("prefill", "tree", "hidden"):
        assert torch.equal(r0[key], one[key]), f"{key}: max |diff| {(r0[key] - one[key]).abs().max().item():.3g}"


@pytest.fixture(scope="module")
def two_ranks(spawned):
    """Decoding at TP = 2 and `jetspec bench` at TP = 2 and data-parallel (`decode_and_bench`),
    and the one-process decoding of the same model."""
    return spawned["decode"]


@needs_gloo
def test_speculative_output_equals_plain_output_at_tp2(two_ranks):
    one, (r0, r1) = two_ranks
    r0, r1 = r0["decode"], r1["decode"]
    assert r0["spec"] == r0["plain"] == r1["spec"] == r1["plain"]  # lossless, and the ranks in lockstep
    assert r0["plain"] == one["plain"]  # the split model decodes the one-process model's tokens
    assert r0["sampled"] == r1["sampled"]  # rank 0's draws are every rank's
    assert max(r0["tau"]) > 1, r0["tau"]  # drafts were accepted: shared trees were verified, not only roots


@needs_gloo
@pytest.mark.parametrize("mode", ["bench_tp", "bench_dp"])
def test_bench_over_two_ranks_writes_every_row_once(two_ranks, mode):
    """Tensor parallel: rank 0 alone writes; data parallel: each rank writes its shard. Either way
    one plain and one speculative row per prompt, identical outputs, and one summary per pipeline."""
    _, (r0, r1) = two_ranks
    rows = r0[mode]
    assert rows == r1[mode]  # one file, read by both after the end
    for kind in ("plain", "spec"):
        assert sorted(r["prompt_id"] for r in rows if r["kind"] == kind) == [str(i) for i in range(3)]
    assert all(r["identical"] for r in rows if r["kind"] == "spec")
    assert sorted(r["pipeline"] for r in rows if r["kind"] == "summary") == ["ngram", "plain"]


def test_a_degree_must_split_the_kv_heads_and_the_mlp(tiny_checkpoint):
    folder = tiny_checkpoint("qwen3")[0]  # 2 KV heads, intermediate size 112
    with pytest.raises(ConfigError) as e:
        load_decoder_target(DecoderTargetOptions(path=str(folder), tensor_parallel=3), TorchAttention())
    assert str(e.value) == ("tensor_parallel = 3 must divide the model's 2 KV heads and its intermediate size 112; "
                            "allowed: 1, 2")
    with pytest.raises(ConfigError, match=r"tensor_parallel = 2 needs 2 processes \(torchrun --nproc-per-node 2 "
                                          r"-m jetspec.cli \.\.\.\), this is a single process"):
        load_decoder_target(DecoderTargetOptions(path=str(folder), tensor_parallel=2), TorchAttention())


def test_shards_tile_the_checkpoint_tensors():
    """Column-parallel slices stack (dim 0) and row-parallel slices concatenate (dim 1) back into
    the whole tensor; a row-parallel bias is added once (rank 0); replicated tensors are whole."""
    cfg = DecoderConfig(architecture="llama", vocab_size=10, hidden_size=8, intermediate_size=12, num_layers=1,
                        num_heads=4, num_kv_heads=2, head_dim=2, max_positions=16)
    assert allowed_degrees(cfg) == [1, 2]
    local = local_config(cfg, 2)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size, local.hidden_size) == (2, 1, 6, 8)
    w = torch.randn(12, 8)
    for name, dim in (("layers.0.mlp.up_proj.weight", 0), ("layers.0.mlp.down_proj.weight", 1)):
        t = w if dim == 0 else w.t()
        parts = [shard(name, t, r, 2) for r in range(2)]
        assert parts[0].shape[dim] == t.shape[dim] // 2 and torch.equal(torch.cat(parts, dim), t)
    bias = torch.randn(8)
    assert torch.equal(shard("layers.0.mlp.down_proj.bias", bias, 0, 2), bias)
    assert not shard("layers.0.mlp.down_proj.bias", bias, 1, 2).any()
    emb = torch.randn(10, 8)
    for name in ("embed_tokens.weight", "lm_head.weight", "layers.0.self_attn.q_norm.weight"):
        whole = shard(name, emb, 1, 2)
        assert torch.equal(whole, emb) and whole.data_ptr() == emb.data_ptr()  # replicated, not copied
