"""The real embedded default model, SmolLM2-135M-Instruct (converted once per session into the
default cache, or `$JETSPEC_CACHE`): our decoder's logits equal transformers' on it (fp32), greedy
decoding produces the same tokens, and the tokenizer fits the model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import jetspec

from jetspec.caches.dense import DenseKVCache
from jetspec.core.interfaces import AttentionMeta
from jetspec.kernels.reference import TorchAttention
from jetspec.targets.decoder import DecoderTargetOptions, load_decoder_target
from jetspec.targets.default_model import default_model_path

pytestmark = pytest.mark.slow

TOL = 1e-4
QUESTIONS = ["What is 2+2?", "Write a haiku about the sea.", "Explain what a binary search does in one sentence."]


@pytest.fixture(scope="session")
def smollm2():
    """-> (our target, transformers model), both fp32 on the CPU, from the same converted folder."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    folder = default_model_path()
    target = load_decoder_target(DecoderTargetOptions(path=None, dtype="float32", device="cpu"), TorchAttention())
    hf = AutoModelForCausalLM.from_pretrained(  # eager: the same op order as our reference attention
        str(folder), dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    return target, hf


def chat(tokenizer, question: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_the_default_is_smollm2_with_a_fitting_tokenizer(smollm2):
    target, _ = smollm2
    tok = target.tokenizer
    assert (target.info.name, target.info.architecture, target.info.num_layers) == ("SmolLM2-135M-Instruct", "llama", 30)
    assert len(tok) == target.info.vocab_size == 49152
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert 2 in target.info.eos_token_ids  # <|im_end|> ends a chat turn
    text = "Speculative decoding is lossless."
    assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.parametrize("question", QUESTIONS)
def test_prefill_logits_equal_transformers(smollm2, question):
    target, hf = smollm2
    ids = chat(target.tokenizer, question)
    cache = DenseKVCache(target.info, 256)
    cache.begin(len(ids))
    ours = target.forward(torch.tensor(ids), AttentionMeta.for_chain(len(ids), 0), cache, hidden_layers=(1, 14, 27))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
    assert (ours.logits - ref.logits[0]).abs().max() <= TOL
    for k, l in enumerate((1, 14, 27)):  # the residual stream reaches |x| ~ 2.5e4: compare relatively
        expected = ref.hidden_states[l + 1][0]
        assert (ours.hidden[:, k] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))


def test_greedy_decoding_equals_transformers_generate(smollm2):
    target, hf = smollm2
    ids = chat(target.tokenizer, QUESTIONS[0])
    cache = DenseKVCache(target.info, 256)
    cache.begin(len(ids))
    logits = target.forward(torch.tensor(ids), AttentionMeta.for_chain(len(ids), 0), cache).logits
    cache.commit(range(len(ids)))
    ours = []
    while len(ours) < 24:
        ours.append(int(logits[-1].argmax()))
        if ours[-1] in target.info.eos_token_ids:
            break
        cache.begin(1)
        logits = target.forward(torch.tensor(ours[-1:]), AttentionMeta.for_chain(1, cache.committed), cache).logits
        cache.commit([0])
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=len(ours), do_sample=False)[0, len(ids):].tolist()
    assert ours == ref, (target.tokenizer.decode(ours), target.tokenizer.decode(ref))
    assert "4" in target.tokenizer.decode(ours)


def real_prompts(n_math: int = 10, n_bench: int = 10) -> list[str]:
    """GSM8K test questions and first turns of Spec-Bench, from the shared prompt sets."""
    repo = Path(__file__).resolve().parents[2]
    for root in (repo / "shared" / "data" / "prompts", repo.parent / "shared" / "data" / "prompts"):
        if root.is_dir():
            break
    else:
        pytest.skip("the shared prompt sets (shared/data/prompts) are not next to this checkout")
    with open(root / "gsm8k_test.jsonl") as f:
        math = [json.loads(line)["question"] for line in itertools.islice(f, n_math)]
    with open(root / "spec_bench.jsonl") as f:
        rows = [json.loads(line) for line in f]
    bench = [r["turns"][0] for r in rows[:: max(1, len(rows) // n_bench)]][:n_bench]
    return math + bench


def test_speculative_decoding_equals_plain_greedy_on_real_prompts(smollm2):
    """Lossless on the real model: n-gram drafts verified as trees commit exactly the plain greedy
    tokens, for every prompt."""
    target, _ = smollm2
    pipe = (
        jetspec.builder()
        .target(target)
        .drafter("ngram")
        .scorer("best-first")
        .generation(budget=16, max_new_tokens=64)
        .build()
    )
    accepted = 0
    for prompt in real_prompts():
        plain = pipe.generate_plain(prompt)
        spec = pipe.generate(prompt)
        assert spec.tokens == plain.tokens, prompt
        accepted += spec.stats.accepted_drafts
    assert accepted > 0  # the trees were not all rejected, so verification paths were exercised


def test_the_shipped_causal_head_drafts_losslessly_for_smollm2(smollm2):
    """`jetspec` without a checkpoint picks the head shipped for this exact target (name and
    fingerprint), drafts with it, and stays lossless."""
    target, _ = smollm2
    pipe = jetspec.builder().target(target).drafter("jetspec").generation(budget=32, max_new_tokens=48).build()
    assert pipe.drafter.head.config.target_fingerprint == target.info.fingerprint
    taus = []
    for prompt in real_prompts(2, 2):
        spec = pipe.generate(prompt)
        assert spec.tokens == pipe.generate_plain(prompt).tokens, prompt
        taus.append(spec.stats.tau)
    assert sum(taus) / len(taus) > 1.1  # trained, not random: it does get drafts accepted
