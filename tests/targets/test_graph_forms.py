"""A single sequence's CUDA graphs (`targets/decoder/graphs.py`) key on the attention's launch form
(the decoder's `launch_form`, passed per call as its eager forward is):
a graph records the launches of its capture, and the exact triton kernel takes one launch or two by
the tree's size and T (`kernels/invariant_launch_forms.py`). As a sequence's context grows past
the point where its bucket's form changes, the next forward must replay a graph of the new form,
never the old one. Here the graphs are a recorder that runs each forward eagerly (no CUDA on this
machine) and notes the keys; test_exact_gpu.py replays real graphs of both forms on the GPU."""

from __future__ import annotations

import torch

from jetspec.caches.dense import DenseKVCache
from jetspec.core.interfaces import AttentionMeta, LaunchForms, TargetOutput
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import TorchAttention
from jetspec.kernels.triton_backend import TritonAttention
from jetspec.targets.decoder.config import DecoderConfig
from jetspec.targets.decoder.graphs import CudaGraphForward
from jetspec.targets.decoder.model import DecoderTarget
from jetspec.testing.exactness import random_decoder
from jetspec.testing.kv_semantics import small_info

GROUP = 4


class Recorder:
    """`GraphSet`'s interface, eager: each key's forward runs at every replay; keys in call order."""

    def __init__(self):
        self.captures: list = []
        self.replays: list = []

    def captured(self, key, fn):
        self.captures.append(key)
        return fn()

    def replay(self, key, fn):
        self.replays.append(key)
        return fn()

    def clear(self):
        pass


def two_forms(b: int, prefix_len: int) -> int:
    """One launch while T < 300, two after (any rule would do: the graphs only read it)."""
    return int(b == 1 or prefix_len < 300)


def decoder(attention) -> DecoderTarget:
    """A small random decoder of GROUP query heads per KV head, attending through `attention`."""
    cfg = DecoderConfig(architecture="llama", vocab_size=10, hidden_size=16, intermediate_size=12, num_layers=1,
                        num_heads=2 * GROUP, num_kv_heads=2, head_dim=4, max_positions=64)
    target = random_decoder(cfg, "cpu", torch.float32, exact=False)
    return DecoderTarget(target.model, attention, target.info, cuda_graphs=False)


def eager(tokens, meta, cache, hidden_layers):
    return TargetOutput(logits=torch.zeros(tokens.numel(), 8))  # [B, V]


def test_a_bucket_replays_a_graph_of_the_form_its_context_now_takes():
    graphs = CudaGraphForward(torch.device("cpu"))
    graphs.graphs = Recorder()
    cache = DenseKVCache(small_info(1, 1, 8), 1024)
    tree = DraftTree.from_parents(list(range(40)), [-1] + [i // 2 for i in range(39)])  # 40 nodes: bucket 48
    forms = []
    for context in (100, 299, 300, 700):
        cache.begin(context - cache.committed)
        cache.commit(range(context - cache.committed))
        cache.begin(tree.size)
        graphs.forward(tree.tokens, AttentionMeta.for_tree(tree, context), cache, (), eager, two_forms)
        forms.append(graphs.graphs.replays[-1][3])
        assert graphs.graphs.replays[-1] == (id(cache), (), 48, int(context < 300)), context
    assert forms == [1, 1, 0, 0]
    assert {k[3] for k in graphs.graphs.captures if k[2] > 1} == {1}, "the first forward captures its own form only"


def test_the_decoder_asks_its_backend_for_a_bucket_of_queries_times_the_group_a_plain_step_being_a_chain():
    asked = []

    class Asked(TorchAttention):
        def launch_form(self, rows: int, prefix_len: int, chain: bool, key_bytes: int) -> int:
            asked.append((rows, prefix_len, chain, key_bytes))
            return len(asked)

    target = decoder(Asked())
    assert [target.launch_form(b, t) for b, t in ((1, 7), (16, 100), (48, 20_000))] == [1, 2, 3]
    kv = 2 * 2 * 4 * 4  # K and V of 2 KV heads of 4 dims in float32
    assert asked == [(GROUP, 7, True, kv), (16 * GROUP, 100, False, kv), (48 * GROUP, 20_000, False, kv)]


def test_backends_of_one_form_key_every_graph_alike():
    assert decoder(TorchAttention()).launch_form(48, 10**6) == 0
    assert TritonAttention().launch_form(48 * GROUP, 10**6, False, 768) == 0  # not exact: one form
    assert isinstance(TritonAttention(invariant=True), LaunchForms)
