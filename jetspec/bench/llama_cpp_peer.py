"""llama.cpp as a `jetspec bench` peer, through its Python binding `llama-cpp-python` (`llama_cpp`):

* `llama.cpp:greedy`  - `Llama.generate` at temperature 0 (llama.cpp's greedy sampler)
* `llama.cpp:lookup`  - the same with `LlamaPromptLookupDecoding` drafting `prompt_lookup_num_tokens`
                        tokens per step (llama-cpp-python's prompt-lookup speculation)

What a user of this model would run instead of us: the GGUF our embedded default comes from
(`peers.llama_cpp_gguf = "q4_1"`), or that file at f16, bf16 (the weights our bf16 target runs)
or f32 (`jetspec.bench.gguf_precision`), or any GGUF path; every layer on the GPU
(`n_gpu_layers = -1`), flash attention as configured. It is fed our prompt tokens as they are
and stops where our pipelines stop (max new tokens, or a token of the target's end-of-sequence
set, which it keeps), so rows compare token for token with plain decoding. A peer that cannot run
is skipped with a one-line reason: llama_cpp missing, a build without GPU offload for a CUDA
target, no GGUF for the target, a vocabulary that differs from the target's.

Timing is the runner's: wall time of one `generate` call, prompt evaluation included (as for our
plain decoding), measured on a fresh context state (no prompt-prefix reuse between calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.config import Component

LLAMA_CPP_PEERS = ("llama.cpp:greedy", "llama.cpp:lookup")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def gguf_for(target: Component, setting: str) -> tuple[Path | None, str]:
    """(GGUF file of the target at `setting`, or None with the reason). `setting` is a precision
    of the embedded default (`gguf_precision.PRECISIONS`) or a path to a .gguf file."""
    from .gguf_precision import PRECISIONS, default_gguf

    if setting not in PRECISIONS:
        path = Path(setting).expanduser()
        return (path, "") if path.is_file() else (None, f"no GGUF file at '{path}'")
    if target.name != "decoder" or target.options.get("path"):
        return None, (f"target '{target.name}' is not the embedded default; set `peers.llama_cpp_gguf` "
                      "to a GGUF file of it")
    try:
        return default_gguf(setting), ""
    except Exception as e:
        return None, f"no {setting} GGUF of the default model: {_first_line(e)}"


class LlamaCppPeers:
    """One `Llama` per chosen peer (the lookup one needs all-token logits), loaded once."""

    def __init__(self, config: Any, target_component: Component, target: Any, names: Sequence[str]):
        self.config = config
        self.skipped: dict[str, str] = {}  # peer -> why it does not run
        self.models: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}  # what the run row records about this peer
        if not names:
            return
        why = self._load(target_component, target, list(names))
        if why:
            self.skipped = {p: why for p in names}

    def _load(self, target_component: Component, target: Any, names: list[str]) -> str:
        try:
            import llama_cpp
        except Exception as e:  # ImportError, or a shared library that does not load
            return f"llama_cpp is not importable ({_first_line(e)}); pip install llama-cpp-python"
        info = target.info
        gpu = llama_cpp.llama_supports_gpu_offload()
        if info.device.type == "cuda" and not gpu:
            return "llama-cpp-python was built without GPU offload (build it with CMAKE_ARGS=\"-DGGML_CUDA=on\")"
        path, why = gguf_for(target_component, self.config.llama_cpp_gguf)
        if path is None:
            return why
        c = self.config
        for name in names:
            draft = None
            if name == "llama.cpp:lookup":
                from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

                draft = LlamaPromptLookupDecoding(max_ngram_size=c.llama_cpp_max_ngram, num_pred_tokens=c.prompt_lookup_num_tokens)
            try:
                model = llama_cpp.Llama(
                    model_path=str(path), n_gpu_layers=c.llama_cpp_n_gpu_layers if info.device.type == "cuda" else 0,
                    n_ctx=c.llama_cpp_n_ctx, flash_attn=c.llama_cpp_flash_attn, draft_model=draft, verbose=False,
                )
            except Exception as e:
                return f"llama.cpp cannot load {path.name}: {_first_line(e)}"
            if model.n_vocab() != info.vocab_size:
                return f"{path.name} has a vocabulary of {model.n_vocab()}, the target {info.vocab_size}"
            self.models[name] = model
        self.settings = {"gguf": str(path), "llama_cpp_python": llama_cpp.__version__, "gpu_offload": gpu,
                         "n_gpu_layers": c.llama_cpp_n_gpu_layers, "flash_attn": c.llama_cpp_flash_attn, "n_ctx": c.llama_cpp_n_ctx}
        return ""

    @property
    def active(self) -> list[str]:
        return [p for p in self.models if p not in self.skipped]

    def generate(self, peer: str, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int]) -> list[int]:
        """Greedy continuation of `prompt` (token ids): at most `max_new_tokens`, ending with the
        first token of `eos` if one comes."""
        model = self.models[peer]
        need = len(prompt) + max_new_tokens + (self.config.prompt_lookup_num_tokens if peer == "llama.cpp:lookup" else 0)
        if need > self.config.llama_cpp_n_ctx:
            raise ValueError(f"{len(prompt)} prompt + {max_new_tokens} new tokens (+ a draft) need {need} positions; "
                             f"raise peers.llama_cpp_n_ctx ({self.config.llama_cpp_n_ctx})")
        model.reset()  # forget the last call's tokens: its prompt must not be reused from the KV cache
        out: list[int] = []
        if max_new_tokens <= 0:
            return out
        stops = set(eos)
        steps = model.generate(list(prompt), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
        try:
            for token in steps:
                out.append(int(token))
                if len(out) >= max_new_tokens or token in stops:
                    break
        finally:
            steps.close()
        return out
