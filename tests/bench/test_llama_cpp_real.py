"""The real llama.cpp peer (llama-cpp-python, on the CPU here) on the embedded default model's GGUF:
fed our chat-formatted prompt tokens as they are, llama.cpp on the f32 GGUF (our very weights)
continues them as our plain decoding does, token for token; on the f32 and the shipped Q4_1 file
its prompt-lookup speculation gives its greedy output. Skipped where `llama_cpp` is not installed."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

llama_cpp = pytest.importorskip("llama_cpp")

import jetspec
from jetspec.bench.config import PeersConfig
from jetspec.bench.llama_cpp_peer import LLAMA_CPP_PEERS, LlamaCppPeers
from jetspec.core.config import Component

NEW = 48
QUESTIONS = ["What is 7 * 6? Answer in one sentence.", "Repeat after me: the cat sat on the mat, the cat sat on the mat."]


@pytest.fixture(scope="module")
def ours():
    pytest.importorskip("gguf")
    return (jetspec.builder().target("decoder", dtype="float32", device="cpu").drafter("ngram")
            .generation(max_new_tokens=NEW).build())  # fmt: skip


@pytest.mark.parametrize("precision", ["f32", "q4_1"])
def test_llama_cpp_continues_our_prompt_tokens_like_plain_decoding(ours, precision):
    config = PeersConfig(include=list(LLAMA_CPP_PEERS), llama_cpp_gguf=precision)
    peers = LlamaCppPeers(config, Component(name="decoder"), ours.target, LLAMA_CPP_PEERS)
    assert not peers.skipped and peers.active == list(LLAMA_CPP_PEERS)
    eos = list(ours.target.info.eos_token_ids)
    for question in QUESTIONS:
        ids = ours.encode(question)
        plain = ours.generate_plain(ids).tokens
        greedy = peers.generate("llama.cpp:greedy", ids, NEW, eos)
        lookup = peers.generate("llama.cpp:lookup", ids, NEW, eos)
        assert 0 < len(greedy) <= NEW and (len(greedy) == NEW or greedy[-1] in eos)
        assert lookup == greedy  # llama-cpp-python's speculation is lossless here
        if precision == "f32":  # the same weights: the same tokens (a prompt fed differently would differ at once)
            assert greedy == plain, ours.target.tokenizer.decode(greedy)
        # q4_1 (the shipped file) rounds weights otherwise: its output may leave ours at a near-tie, even
        # at the first token (HumanEval/98 on 2026-12-02); the bench rows record where


def test_lookup_runs_past_llama_cpps_batch_of_512_positions(ours):
    """A prompt and continuation longer than llama.cpp's n_batch (512): llama-cpp-python keeps a draft
    model's logits in a table of n_batch rows unless it is built with logits_all (HumanEval/124 and
    /130 on the H200, 2026-12-03: "could not broadcast input array from shape (540672,) into shape
    (393216,)"); the lookup peer must still give its greedy output."""
    config = PeersConfig(include=list(LLAMA_CPP_PEERS), llama_cpp_gguf="q4_1")
    peers = LlamaCppPeers(config, Component(name="decoder"), ours.target, LLAMA_CPP_PEERS)
    eos = list(ours.target.info.eos_token_ids)
    ids = ours.encode("Repeat this list back to me, exactly: " + ", ".join(f"item {i}" for i in range(88)))
    assert 460 < len(ids) < 512 < len(ids) + NEW
    greedy = peers.generate("llama.cpp:greedy", ids, NEW, eos)
    assert peers.generate("llama.cpp:lookup", ids, NEW, eos) == greedy
