"""The `transformers` target verifies a whole tree in ONE forward: the logits at every node equal
those of running the node's root path as a plain sequence."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from support.models import tiny_hf_model, tiny_target


@settings(max_examples=15)
@given(family=st.sampled_from(["llama", "qwen2", "qwen3"]), prefix=st.integers(0, 6), n=st.integers(1, 12), data=st.data())
def test_one_forward_over_a_tree_equals_each_path_alone(family, prefix, n, data):
    target = tiny_target(family, 0) if family != "qwen2" else _qwen2()
    parents = [-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
    tree = DraftTree.from_parents([10 + i for i in range(n)], parents)
    context = torch.arange(20, 20 + prefix)
    cache = DenseKVCache(target.info, 64)
    if prefix:
        cache.begin(prefix)
        target.forward(context, AttentionMeta.for_chain(prefix, 0), cache)
        cache.commit(range(prefix))
    cache.begin(tree.size)
    out = target.forward(tree.tokens, AttentionMeta.for_tree(tree, prefix), cache, hidden_layers=(0, 1))
    assert out.logits.shape == (tree.size, 96) and out.hidden.shape == (tree.size, 2, 32)
    for i in range(tree.size):
        seq = torch.cat([context, tree.tokens[tree.path_to(i)]])
        ref = target.model(seq[None]).logits[0, -1]
        torch.testing.assert_close(out.logits[i], ref, atol=1e-4, rtol=1e-4)


_Q2 = {}


def _qwen2():
    from jetspec.targets.transformers_adapter import TransformersTarget

    if "t" not in _Q2:
        _Q2["t"] = TransformersTarget(tiny_hf_model("qwen2", 0))
    return _Q2["t"]


def test_embed_and_lm_head_are_the_models_own():
    target = tiny_target("llama", 0)
    tokens = torch.tensor([1, 2, 3])
    assert torch.equal(target.embed(tokens), target.model.get_input_embeddings()(tokens))
    h = torch.randn(3, 32)
    assert torch.equal(target.lm_head(h), target.model.get_output_embeddings()(h))
    assert target.info.num_kv_heads == 2 and target.info.head_dim == 8 and len(target.info.fingerprint) == 16
