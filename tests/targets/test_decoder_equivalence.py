"""Our decoder computes what `transformers` computes, on the same weights (fp32, |diff| <= 1e-4):
for prefill, for decode steps after prefill, and for a whole draft tree verified in ONE forward
under the tree mask (each node == transformers run on the root->node path alone)."""

from __future__ import annotations

import pytest
import torch

from jetspec.caches.dense import DenseKVCache
from jetspec.core.errors import InputError
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import TorchAttention
from jetspec.targets.decoder import DecoderTargetOptions, load_decoder_target

from support.hf_checkpoints import FAMILIES

TOL = 1e-4
VOCAB = 128


def load(folder, **options):
    return load_decoder_target(DecoderTargetOptions(path=str(folder), device="cpu", **options), TorchAttention())


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    """transformers' next-token logits at every position of `tokens`: [T, V]."""
    with torch.no_grad():
        return hf(input_ids=torch.tensor([tokens])).logits[0]


def random_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def random_tree(root: int, size: int, seed: int) -> DraftTree:
    """`size` nodes, each draft hanging under a random earlier node, sibling tokens distinct."""
    g = torch.Generator().manual_seed(seed)
    tokens, parents = [root], [-1]
    while len(tokens) < size:
        p = int(torch.randint(0, len(tokens), (1,), generator=g))
        t = int(torch.randint(0, VOCAB, (1,), generator=g))
        if any(parents[i] == p and tokens[i] == t for i in range(len(tokens))):
            continue
        tokens.append(t)
        parents.append(p)
    return DraftTree.from_parents(tokens, parents)


def prefill(target, cache, tokens: list[int], hidden_layers=()):
    cache.begin(len(tokens))
    out = target.forward(torch.tensor(tokens), AttentionMeta.for_chain(len(tokens), cache.committed), cache, hidden_layers)
    cache.commit(range(len(tokens)))
    return out


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def test_prefill_logits_and_hidden_states_match_transformers(family, tiny_checkpoint):
    folder, hf = tiny_checkpoint(family)
    target = load(folder)
    prompt = random_tokens(19, seed=1)
    L = target.info.num_layers

    out = prefill(target, DenseKVCache(target.info, 64), prompt, hidden_layers=range(L))

    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([prompt]), output_hidden_states=True)
    assert out.logits.shape == (19, VOCAB) and out.logits.dtype == torch.float32
    assert (out.logits - ref.logits[0]).abs().max() <= TOL
    assert out.hidden.shape == (19, L, target.info.hidden_size)
    for l in range(L - 1):  # hidden layer l = output of decoder layer l = hidden_states[l + 1]
        assert (out.hidden[:, l] - ref.hidden_states[l + 1][0]).abs().max() <= TOL
    # the last layer's output is taken before the final norm; transformers reports it after
    final = target.model.norm(out.hidden[:, L - 1])
    assert (final - ref.hidden_states[L][0]).abs().max() <= TOL


def test_decode_steps_after_prefill_match_transformers(family, tiny_checkpoint):
    folder, hf = tiny_checkpoint(family)
    target = load(folder)
    cache = DenseKVCache(target.info, 64)
    tokens = random_tokens(13, seed=2)
    prefill(target, cache, tokens)

    for step, token in enumerate(random_tokens(4, seed=3)):
        cache.begin(1)
        out = target.forward(torch.tensor([token]), AttentionMeta.for_chain(1, cache.committed), cache)
        cache.commit([0])
        tokens.append(token)
        assert (out.logits[0] - hf_logits(hf, tokens)[-1]).abs().max() <= TOL, f"step {step}"


def test_tree_verify_in_one_forward_equals_each_path_alone(family, tiny_checkpoint, seed=0):
    """Committed prefix P, then a tree rooted at the last prompt token: node i's logits equal
    transformers' last logits on P + (tokens on the path root -> i). Committing an accepted
    path and decoding on must also match."""
    folder, hf = tiny_checkpoint(family)
    target = load(folder)
    cache = DenseKVCache(target.info, 64)
    prompt = random_tokens(11, seed=10 + seed)
    prefix = prompt[:-1]
    prefill(target, cache, prefix)
    tree = random_tree(root=prompt[-1], size=20, seed=seed)

    cache.begin(tree.size)
    out = target.forward(tree.tokens, AttentionMeta.for_tree(tree, cache.committed), cache)

    for i in range(tree.size):
        path = [int(tree.tokens[j]) for j in tree.path_to(i)]
        ref = hf_logits(hf, prefix + path)[-1]
        assert (out.logits[i] - ref).abs().max() <= TOL, f"node {i} (depth {int(tree.depths[i])})"

    deepest = int(tree.depths.argmax())
    accepted = tree.path_to(deepest)
    cache.commit(accepted)
    committed = prefix + [int(tree.tokens[j]) for j in accepted]
    bonus = random_tokens(1, seed=99)[0]
    cache.begin(1)
    out = target.forward(torch.tensor([bonus]), AttentionMeta.for_chain(1, cache.committed), cache)
    assert (out.logits[0] - hf_logits(hf, committed + [bonus])[-1]).abs().max() <= TOL


def test_embed_and_lm_head_are_the_targets_own(tiny_checkpoint):
    folder, hf = tiny_checkpoint("llama-llama3")  # untied: the two are distinct matrices
    target = load(folder)
    tokens = torch.tensor(random_tokens(5, seed=4))
    h = torch.randn(5, target.info.hidden_size)
    with torch.no_grad():
        assert torch.equal(target.embed(tokens), hf.get_input_embeddings()(tokens))
        assert torch.allclose(target.lm_head(h), hf.get_output_embeddings()(h), atol=TOL)


def test_lm_head_passes_gradients_to_its_input_but_not_its_weights(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    target = load(folder)
    h = torch.randn(3, target.info.hidden_size, requires_grad=True)
    target.lm_head(h).sum().backward()
    assert h.grad is not None
    assert all(not p.requires_grad for p in target.model.parameters())


def test_bfloat16_load_runs_in_bfloat16_and_tracks_fp32(tiny_checkpoint):
    folder, _ = tiny_checkpoint("qwen3")
    fp32, bf16 = load(folder), load(folder, dtype="bfloat16")
    assert bf16.info.dtype == torch.bfloat16 and bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    prompt = random_tokens(9, seed=5)
    a = prefill(fp32, DenseKVCache(fp32.info, 16), prompt).logits
    b = prefill(bf16, DenseKVCache(bf16.info, 16), prompt).logits
    assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_hidden_layers_come_back_in_the_order_asked(tiny_checkpoint):
    folder, _ = tiny_checkpoint("qwen2")
    target = load(folder)
    prompt = random_tokens(6, seed=6)
    every = prefill(target, DenseKVCache(target.info, 8), prompt, hidden_layers=(0, 1, 2)).hidden
    picked = prefill(target, DenseKVCache(target.info, 8), prompt, hidden_layers=(2, 0, 2)).hidden
    assert torch.equal(picked, every[:, [2, 0, 2]])
    assert prefill(target, DenseKVCache(target.info, 8), prompt).hidden is None
    with pytest.raises(InputError):
        prefill(target, DenseKVCache(target.info, 8), prompt, hidden_layers=(3,))
