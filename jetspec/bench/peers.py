"""`transformers` peers on the same target weights and prompt tokens as our pipelines:

* `generate`      - `model.generate()` greedy
* `prompt_lookup` - the same with `prompt_lookup_num_tokens` (n-gram drafting)
* `assisted`      - assisted generation with a draft model of the same vocabulary

They need a Hugging Face folder of the target: `peers.path`, else the target's `path`, else the
embedded default model's folder (`jetspec.targets.default_model`, imported only when needed). A
peer that cannot run is skipped with a one-line reason recorded in the results.

`llama.cpp:greedy` and `llama.cpp:lookup` are registered here too and run by `llama_cpp_peer.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.config import Component
from .config import PeersConfig
from .llama_cpp_peer import LLAMA_CPP_PEERS, LlamaCppPeers


def row_name(peer: str) -> str:
    """The results' name of a peer: `hf:generate`, ..., and the llama.cpp ones as they are."""
    return peer if peer in LLAMA_CPP_PEERS else f"hf:{peer}"


def peer_settings(config: PeersConfig, peer: str) -> dict[str, Any]:
    """The settings a peer's rows depend on (their key: a change makes `--resume` redo them)."""
    settings = config.model_dump(exclude={"include", "count"})
    own = {k: v for k, v in settings.items() if k.startswith("llama_cpp_")}
    if peer in LLAMA_CPP_PEERS:
        return {**own, "prompt_lookup_num_tokens": config.prompt_lookup_num_tokens}
    return {k: v for k, v in settings.items() if k not in own}


def hf_folder(target: Component, override: str | None = None) -> tuple[Path | None, str]:
    """(Hugging Face folder of the target, or None with the reason)."""
    if override:
        return Path(override).expanduser(), ""
    path = target.options.get("path")
    if path:
        return Path(path).expanduser(), ""
    if target.name != "decoder":
        return None, f"target '{target.name}' has no `path`; set `peers.path` to its Hugging Face folder"
    try:
        from ..targets.default_model import default_model_path
    except ImportError:
        return None, f"target '{target.name}' has no `path` and the default model is not available here"
    try:
        return default_model_path(), ""
    except Exception as e:
        return None, f"the default model folder is unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def context_limit(folder: Path | None) -> int | None:
    """max_position_embeddings from a folder's config.json, read without loading the model."""
    try:
        cfg = json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings")


def _load(path: Path, dtype: torch.dtype, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


class Peers:
    """Loads what the chosen peers need once; `run(peer, ...)` times one generation."""

    def __init__(self, config: PeersConfig, target_component: Component, target: Any):
        self.config = config
        self.skipped: dict[str, str] = {}  # peer -> why it does not run
        self.model = self.assistant = None
        self.eos = list(target.info.eos_token_ids) if config.include else []
        self.llama = LlamaCppPeers(config, target_component, target, [p for p in config.include if p in LLAMA_CPP_PEERS])
        self.skipped.update(self.llama.skipped)
        hf = [p for p in config.include if p not in LLAMA_CPP_PEERS]
        if not hf:
            return
        info = target.info
        live = getattr(target, "model", None)
        if live is not None and hasattr(live, "generate") and config.path is None:
            self.model = live  # the `transformers` target: share its weights
        else:
            folder, why = hf_folder(target_component, config.path)
            if folder is None or not (folder / "config.json").is_file():
                why = why or f"no Hugging Face model at '{folder}'"
                self.skipped.update({p: why for p in hf})
                return
            self.model = _load(folder, info.dtype, info.device)
        if "assisted" in config.include:
            self.assistant = self._assistant(info)

    def _assistant(self, info: Any) -> Any:
        path = self.config.assistant_path
        if not path:
            self.skipped["assisted"] = "no `peers.assistant_path` (a draft model with the target's vocabulary) configured"
            return None
        folder = Path(path).expanduser()
        try:
            vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
        except (OSError, ValueError):
            self.skipped["assisted"] = f"no Hugging Face model at '{folder}'"
            return None
        if vocab != self.model.config.vocab_size:
            self.skipped["assisted"] = f"draft vocabulary {vocab} differs from the target's {self.model.config.vocab_size}"
            return None
        return _load(folder, info.dtype, info.device)

    def close(self) -> None:
        """End what runs outside this process (the llama.cpp worker)."""
        self.llama.close()

    def describe(self, peer: str) -> dict[str, Any]:
        """Fields a peer's rows add: what a llama.cpp peer ran (GGUF, version, GPU offload)."""
        return {"llama_cpp": self.llama.settings} if peer in LLAMA_CPP_PEERS else {}

    @property
    def active(self) -> list[str]:
        return [p for p in self.config.include if p not in self.skipped]

    @torch.no_grad()
    def generate(self, peer: str, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        if peer in LLAMA_CPP_PEERS:
            return self.llama.generate(peer, prompt, max_new_tokens, self.eos)
        extra: dict[str, Any] = {}
        if peer == "prompt_lookup":
            extra["prompt_lookup_num_tokens"] = self.config.prompt_lookup_num_tokens
        elif peer == "assisted":
            extra["assistant_model"] = self.assistant
        ids = torch.tensor([list(prompt)], device=self.model.device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=False,
            eos_token_id=self.eos or None,
            pad_token_id=self.eos[0] if self.eos else None,
            **extra,
        )
        return out[0, ids.shape[1] :].tolist()
