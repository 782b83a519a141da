"""Lossless per sequence, bit-exact (issue #20, part 3): with `exact = true` — our decoder, the
`triton` backend's position-invariant kernels over one paged page pool, here in the CPU
interpreter, in fp32 AND bf16 — every prompt's output at batch size B equals its plain batch-1
output (one token a step), token for token: for prompts of any lengths in any arrival order, any B,
n-gram or random-tree drafters, any budget, row cap and length. In bf16 a free-order batch parts
from plain decoding where the target's logits nearly tie; an exact one cannot."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from support.hf_checkpoints import EXACT_FAMILIES, random_hf_model
from support.registry import make_test_registry

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; on a GPU see "
                                                                   "test_exact_batched_gpu.py")

MAX_NEW = 10
DRAFTERS = {
    "ngram": {"n_max": 3},
    "random-trees": {"reference": [], "extra_branches": 4, "depth": 5, "vocab_size": 128},  # the oracle knowing nothing
}
prompts = st.lists(st.integers(4, 40), min_size=1, max_size=5).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=16)  # repeats: n-gram lookup finds matches
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """-> (build(family, dtype, drafter, **generation) -> an exact pipeline, plain(family, dtype,
    prompt) -> its batch-1 plain output of MAX_NEW tokens, computed once)."""
    folders, outputs = {}, {}

    def build(family: str, dtype: str, drafter: str = "ngram", **generation):
        if family not in folders:
            folders[family] = tmp_path_factory.mktemp(family)
            cls_name, fields = EXACT_FAMILIES[family]
            random_hf_model(cls_name, fields, seed=4).save_pretrained(folders[family])
        return (jetspec.builder(make_test_registry())
                .target("decoder", path=str(folders[family]), dtype=dtype, device="cpu", exact=True)
                .attention("triton").kv_cache("paged")
                .drafter("oracle" if drafter == "random-trees" else drafter, **DRAFTERS[drafter])
                .generation(max_new_tokens=MAX_NEW, **generation).build())  # fmt: skip

    def output(family: str, dtype: str, prompt: tuple[int, ...]) -> tuple[int, ...]:
        key = (family, dtype, prompt)
        if key not in outputs:
            outputs[key] = tuple(build(family, dtype).generate_plain(list(prompt)).tokens)
        return outputs[key]

    return build, output


# 8 examples by default (~15 s each in the Triton interpreter); EXACT_BATCHED_EXAMPLES=N for more
@settings(max_examples=int(os.environ.get("EXACT_BATCHED_EXAMPLES", 8)))
@given(
    family=st.sampled_from(sorted(EXACT_FAMILIES)),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    drafter=st.sampled_from(sorted(DRAFTERS)),
    batch=st.lists(prompts, min_size=1, max_size=4),  # their order is the arrival order
    batch_size=st.integers(1, 4),
    budget=st.integers(1, 16),
    max_new=st.integers(1, MAX_NEW),
    data=st.data(),
)
def test_each_prompt_of_an_exact_batch_decodes_as_plain_decoding_alone(plain, family, dtype, drafter, batch, batch_size,
                                                                       budget, max_new, data):
    build, output = plain
    cap = data.draw(st.one_of(st.none(), st.integers(batch_size, 3 * batch_size)), label="max_verify_rows")
    pipe = build(family, dtype, drafter, budget=budget, batch_size=batch_size, max_verify_rows=cap)
    assert pipe.target.info.exact and pipe.target.batch_problem() is None
    results = pipe.generate_many(batch, max_new_tokens=max_new)
    for prompt, result in zip(batch, results):
        expected = output(family, dtype, tuple(prompt))[:max_new]  # greedy is prefix-closed
        assert tuple(result.tokens) == expected
