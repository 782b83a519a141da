"""A tiny random model saved as a Hugging Face folder, with a character-level tokenizer and a
chat template: what a fresh clone can build offline to run `jetspec bench` end to end."""

from __future__ import annotations

from pathlib import Path

from support.models import EOS, tiny_hf_model

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
VOCAB = 4 + len(CHARS)  # <unk>, <s>, <pad>, </s> (EOS = 3) first


def char_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "<pad>": 2, "</s>": EOS, **{c: 4 + i for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}U: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    return fast


def save_tiny_hf_folder(folder: Path, seed: int = 0, vocab: int = VOCAB) -> Path:
    """`folder` with config.json, weights and the tokenizer (vocabulary `vocab`)."""
    tiny_hf_model("llama", seed=seed, vocab=vocab).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
