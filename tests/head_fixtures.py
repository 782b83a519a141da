"""Tiny random targets for the head tests: a Hugging Face Llama of a few layers, wrapped as far as
a head drafter needs it (`info`, `embed`, `lm_head`), and a tiny chat tokenizer for end-to-end runs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from jetspec.core.interfaces import DecodeState, TargetInfo
from jetspec.drafters.head.frozen_target import hf_identity, teacher_forward

VOCAB = 96
SHARPEN = 16.0  # LM-head scale: top-1 probability ~0.2 instead of ~0.02


def tiny_llama(seed: int = 0, vocab: int = VOCAB, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a peakier next-token distribution than the near-uniform random init
        model.get_output_embeddings().weight.mul_(SHARPEN)
    return model.requires_grad_(False)


class HeadTarget:
    """What a head drafter uses of a target: identity, embedding, LM head (plus the teacher's
    hidden states, computed here the way the pipeline's target would)."""

    def __init__(self, model: LlamaForCausalLM, name: str = "tiny", device: str = "cpu"):
        self.model = model.to(device)
        ident = hf_identity(model, name)
        self.info = TargetInfo(
            name=name, architecture="llama", vocab_size=ident["vocab_size"], hidden_size=ident["hidden_size"],
            num_layers=ident["num_target_layers"], num_kv_heads=ident["num_kv_heads"], head_dim=ident["head_dim"],
            max_positions=512, dtype=torch.float32, device=torch.device(device), eos_token_ids=(2,),
            fingerprint=ident["target_fingerprint"],
        )  # fmt: skip

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(tokens)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(h)

    def hidden(self, tokens: list[int], layers) -> torch.Tensor:
        """[n, k, H] hidden states of `layers` at every token of `tokens`."""
        ids = torch.tensor([tokens], device=self.info.device)
        ctx, _ = teacher_forward(self.model, ids, torch.ones_like(ids), layers)
        return ctx[0]


def observed(drafter, target: HeadTarget, tokens: list[int]) -> DecodeState:
    """A drafter that has seen `tokens` committed (all but the last, the root, have hidden states)."""
    state = DecodeState(tokens=list(tokens), prompt_len=len(tokens))
    drafter.reset(state)
    drafter.observe(state, target.hidden(tokens[:-1], drafter.hidden_layers))
    return state


def assert_drafts_alike(eager, compiled, gpu: HeadTarget, capacity: int = 8) -> None:
    """Two drafters over one target for six steps, fresh prompts and appended rounds alternating, each
    drafter's context outgrowing its buffer (`capacity` rows) on the way: equal contexts and, each step,
    equal proposals (top-k tokens, and log-probs within 1e-4, at depths 0..4)."""
    for drafter in (eager, compiled):
        drafter.cache = type(drafter.cache)(drafter.config.num_layers, drafter.config.num_kv_heads, drafter.config.head_dim,
                                            torch.float32, gpu.info.device, capacity=capacity)  # fmt: skip
    tokens = [5, 17, 33, 8, 61, 12, 40, 9]
    for step in range(6):
        tokens = tokens + [(7 * step + 3) % 90, (11 * step + 5) % 90, (13 * step + 1) % 90]
        if step % 2:  # a round: append the 3 new tokens' context to what is there
            for drafter in (eager, compiled):
                state = DecodeState(tokens=list(tokens), prompt_len=8)
                drafter.observe(state, gpu.hidden(tokens[:-1], drafter.hidden_layers)[drafter.cache.length :])
            se = sc = state
        else:  # a fresh generation over the longer prompt
            se, sc = observed(eager, gpu, tokens), observed(compiled, gpu, tokens)
        for (ke, ve), (kc, vc) in zip(eager.cache.context(), compiled.cache.context()):
            assert torch.allclose(ke, kc, atol=1e-4) and torch.allclose(ve, vc, atol=1e-4)
        pe, pc = eager.propose(se, budget=16), compiled.propose(sc, budget=16)
        for depth in range(5):
            assert [t for t, _ in pe.children((0,) * depth)] == [t for t, _ in pc.children((0,) * depth)]
            assert torch.allclose(torch.tensor([lp for _, lp in pe.children((0,) * depth)]),
                                  torch.tensor([lp for _, lp in pc.children((0,) * depth)]), atol=1e-4)  # fmt: skip


def save_tiny_chat_model(folder: Path, seed: int = 0) -> Path:
    """A Hugging Face folder (weights + character-level tokenizer with a chat template)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    model = tiny_llama(seed, vocab=128)
    model.config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_tiny_eval_sets(folder: Path, leaked: str = "") -> Path:
    """The four evaluation files the corpus overlap check reads, one item each (`leaked` in GSM8K test)."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "math500.jsonl").write_text(json.dumps({"problem": "Compute 1 + 1.", "solution": "2"}) + "\n")
    (folder / "gsm8k_test.jsonl").write_text(json.dumps({"question": leaked + " How much does she make?", "answer": "18"}) + "\n")
    with gzip.open(folder / "humaneval.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "def add(a, b):", "canonical_solution": "    return a + b"}) + "\n")
    (folder / "spec_bench.jsonl").write_text(json.dumps({"turns": ["Tell me a joke.", "Another one."]}) + "\n")
    return folder


def tiny_corpus(root: Path, prompts: list[str], rows: int, chunk: int = 64):
    """The tiny chat model in root/tiny-chat and a corpus it wrote in root/corpus (short questions and
    answers, 90% from `prompts` as GSM8K-train stand-ins, checked against tiny evaluation sets)
    -> (model folder, model, its identity, corpus folder)."""
    from jetspec.drafters.head.contamination import EvalOverlap
    from jetspec.drafters.head.frozen_target import load_hf_target
    from jetspec.drafters.head.make_corpus import CorpusConfig, make_corpus

    folder = save_tiny_chat_model(root / "tiny-chat")
    model, tokenizer = load_hf_target(folder, "cpu", torch.float32)
    identity = hf_identity(model, folder.name)
    cfg = CorpusConfig(rows=rows, chunk_size=chunk, batch_size=chunk, max_question_tokens=8, max_answer_tokens=10, gsm8k_share=0.9)
    make_corpus(model, tokenizer, root / "corpus", cfg, identity, prompts, EvalOverlap(write_tiny_eval_sets(root / "eval")), progress=False)
    return folder, model, identity, root / "corpus"
