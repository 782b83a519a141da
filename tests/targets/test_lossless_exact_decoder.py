"""The lossless property through the engine users run: our decoder with `exact = true`, the paged
KV cache and the `triton` backend (here in the CPU interpreter), in bf16 and fp32 — speculative
output equals plain output of the same pipeline, token for token, with the n-gram drafter and with
the causal head alone (`lookup = false`, random weights: mostly wrong drafts, sometimes right)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from support.hf_checkpoints import EXACT_FAMILIES, random_hf_model

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; on a GPU see test_cuda_graphs.py")

DRAFTERS = {
    "ngram": {"n_max": 3},
    "jetspec": {"checkpoint": "random", "block_size": 4, "top_k": 3, "lookup": False},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = tmp_path_factory.mktemp(family)
            cls_name, fields = EXACT_FAMILIES[family]
            random_hf_model(cls_name, fields, seed=2).save_pretrained(made[family])
        return made[family]

    return get


prompts = st.lists(st.integers(4, 40), min_size=1, max_size=6).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=2, max_size=20)
)


@settings(max_examples=30)
@given(family=st.sampled_from(sorted(EXACT_FAMILIES)), dtype=st.sampled_from(["float32", "bfloat16"]),
       drafter=st.sampled_from(sorted(DRAFTERS)), prompt=prompts, max_new=st.integers(1, 12),
       budget=st.integers(1, 24), scorer=st.sampled_from(["best-first", "chain", "accum-logp"]))
def test_speculative_equals_plain_through_the_exact_decoder(folders, family, dtype, drafter, prompt, max_new, budget,
                                                            scorer):
    pipe = (jetspec.builder()
            .target("decoder", path=str(folders(family)), dtype=dtype, device="cpu", exact=True)
            .attention("triton")
            .kv_cache("paged")
            .drafter(drafter, **DRAFTERS[drafter])
            .scorer(scorer)
            .generation(budget=budget, max_new_tokens=max_new)
            .build())  # fmt: skip
    assert pipe.target.info.exact
    plain = pipe.generate_plain(list(prompt))
    spec = pipe.generate(list(prompt))
    assert spec.tokens == plain.tokens


def test_speculative_equals_plain_with_the_projections_k_in_chunks(tmp_path):
    """`linear_chunk = 128`: the down projection's K = 256 summed in two chunks (a plain step's as two programs,
    a tree's in turn past 16 rows), and speculative output stays plain output, one sequence and batched."""
    cls_name, fields = EXACT_FAMILIES["llama"]
    random_hf_model(cls_name, dict(fields, intermediate_size=256), seed=4).save_pretrained(tmp_path)
    for drafter in sorted(DRAFTERS):
        pipe = (jetspec.builder()
                .target("decoder", path=str(tmp_path), dtype="float32", device="cpu", exact=True, linear_chunk=128)
                .attention("triton").kv_cache("paged").drafter(drafter, **DRAFTERS[drafter])
                .generation(budget=20, max_new_tokens=8)
                .build())  # fmt: skip
        assert pipe.target.ops.chunk == 128
        prompts = ([5, 6, 7, 5, 6, 7, 5], [9, 10] * 6)
        plain = [pipe.generate_plain(p).tokens for p in prompts]
        assert [pipe.generate(p).tokens for p in prompts] == plain
        assert [r.tokens for r in pipe.generate_many(list(prompts), batch_size=2)] == plain  # packed steps: rows of 2 trees
