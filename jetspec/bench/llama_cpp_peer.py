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

llama.cpp runs in a child process, `llama_cpp_worker.py` (its docstring has the protocol), that
never imports torch: on the H200 machine torch and llama-cpp-python's CUDA build segfault in one
process. This module does not import `llama_cpp` either; it only looks whether it is installed. A
worker that dies (a signal, an exit) is a one-line reason: the peers' skip reason if it dies while
loading, each later `generate`'s error (a row's `error`) if it dies after.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..core.config import Component

LLAMA_CPP_PEERS = ("llama.cpp:greedy", "llama.cpp:lookup")
WORKER = Path(__file__).with_name("llama_cpp_worker.py")  # run as a script: no jetspec, no torch


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


class LlamaCppError(RuntimeError):
    """A generation the llama.cpp worker did not give: its one-line reason."""


def _llama_cpp_dir() -> tuple[str | None, str]:
    """(the folder holding the `llama_cpp` this interpreter would import, "") or (None, why there is
    none), found without importing it: llama.cpp must not load where torch is."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError) as e:
        spec, why = None, _first_line(e)
    else:
        why = "ModuleNotFoundError: No module named 'llama_cpp'"
    if spec is None:
        return None, f"llama_cpp is not importable ({why}); pip install llama-cpp-python"
    places = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    return (str(Path(places[0]).parent) if places else ""), ""


class LlamaCppPeers:
    """The chosen peers, loaded once in one `llama_cpp_worker.py` process (one `Llama` per peer:
    the lookup one needs all-token logits); `generate` asks it for one continuation."""

    def __init__(self, config: Any, target_component: Component, target: Any, names: Sequence[str]):
        self.config = config
        self.skipped: dict[str, str] = {}  # peer -> why it does not run
        self.settings: dict[str, Any] = {}  # what the run row records about this peer
        self._peers: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._dead = ""  # why the worker is gone, once it is
        if not names:
            return
        why = self._load(target_component, target, list(names))
        if why:
            self.skipped = {p: why for p in names}
            self.close()

    def _load(self, target_component: Component, target: Any, names: list[str]) -> str:
        where, why = _llama_cpp_dir()
        if where is None:
            return why
        info = target.info
        cuda = info.device.type == "cuda"
        path, why = gguf_for(target_component, self.config.llama_cpp_gguf)
        if path is None:
            return why
        c = self.config
        request = {
            "model_path": str(path), "n_gpu_layers": c.llama_cpp_n_gpu_layers if cuda else 0, "n_ctx": c.llama_cpp_n_ctx,
            "flash_attn": c.llama_cpp_flash_attn, "require_gpu": cuda, "peers": names,
            "max_ngram": c.llama_cpp_max_ngram, "num_pred_tokens": c.prompt_lookup_num_tokens, "llama_cpp_dir": where or None,
        }
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the worker: its last line says why it died
        self._process = subprocess.Popen(  # the worker imports no jetspec, hence no torch (module docstring)
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=dict(os.environ), text=True, encoding="utf-8",
        )
        reply = self._ask(request)
        if "error" in reply:
            return str(reply["error"])
        if reply["n_vocab"] != info.vocab_size:
            return f"{path.name} has a vocabulary of {reply['n_vocab']}, the target {info.vocab_size}"
        self._peers = names
        self.settings = {"gguf": str(path), "llama_cpp_python": reply["version"], "gpu_offload": reply["gpu_offload"],
                         "n_gpu_layers": c.llama_cpp_n_gpu_layers, "flash_attn": c.llama_cpp_flash_attn, "n_ctx": c.llama_cpp_n_ctx}
        return ""

    def _ask(self, message: dict) -> dict:
        """The worker's JSON reply to `message`, or {"error": why it died}."""
        process = self._process
        if process is None:
            return {"error": self._dead or "llama.cpp worker is not running"}
        try:
            process.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            while line := process.stdout.readline():  # type: ignore[union-attr]
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue  # not ours: something in the child that printed to stdout
                if isinstance(reply, dict):
                    return reply
        except OSError:  # BrokenPipeError: it is gone already
            pass
        return {"error": self._death()}

    def _death(self) -> str:
        """Why the worker stopped answering, in one line ("... exited with signal SIGSEGV: <its last stderr line>")."""
        process, self._process = self._process, None
        assert process is not None
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # no reply, yet alive: stop it
            process.kill()
            code = process.wait()
        if code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        else:
            how = f"status {code}"
        last = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = [s.strip() for s in self._stderr.read().decode("utf-8", "replace").splitlines() if s.strip()]
            last = f": {lines[-1][:300]}" if lines else ""
        self._dead = f"llama.cpp worker exited with {how}{last}"
        return self._dead

    def close(self) -> None:
        """End the worker (it exits at the end of its input)."""
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()  # type: ignore[union-attr]
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def active(self) -> list[str]:
        return [p for p in self._peers if p not in self.skipped]

    def generate(self, peer: str, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int]) -> list[int]:
        """Greedy continuation of `prompt` (token ids): at most `max_new_tokens`, ending with the
        first token of `eos` if one comes. Raises LlamaCppError (one line) if the worker gives none."""
        need = len(prompt) + max_new_tokens + (self.config.prompt_lookup_num_tokens if peer == "llama.cpp:lookup" else 0)
        if need > self.config.llama_cpp_n_ctx:
            raise ValueError(f"{len(prompt)} prompt + {max_new_tokens} new tokens (+ a draft) need {need} positions; "
                             f"raise peers.llama_cpp_n_ctx ({self.config.llama_cpp_n_ctx})")
        reply = self._ask({"peer": peer, "prompt": [int(t) for t in prompt], "max_new_tokens": int(max_new_tokens),
                           "eos": [int(t) for t in eos]})
        if "error" in reply:
            raise LlamaCppError(str(reply["error"]))
        return [int(t) for t in reply["tokens"]]
