"""The llama.cpp peers (`llama.cpp:greedy`, `llama.cpp:lookup`): a peer that cannot run leaves one
line saying why in the run row and RESULTS.md, and no prompt rows; one that runs is fed our prompt
tokens and stops where our pipelines stop. Here `llama_cpp` is absent or a stand-in; the real one
runs in test_llama_cpp_real.py."""

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from support.hf_folder import save_tiny_hf_folder

from jetspec.bench.config import PeersConfig
from jetspec.bench.llama_cpp_peer import LlamaCppPeers
from jetspec.bench.peers import peer_settings, row_name
from jetspec.bench.rows import read_rows
from jetspec.cli import main
from jetspec.core.config import Component

BOTH = ["llama.cpp:greedy", "llama.cpp:lookup"]
DEFAULT = Component(name="decoder")


@dataclass
class Info:
    vocab_size: int = 100
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eos_token_ids: tuple = (2,)


@dataclass
class Target:
    info: Info = field(default_factory=Info)


def stand_in(monkeypatch, script=(5, 6, 7, 8, 9), vocab=100, gpu=False):
    """A `llama_cpp` module whose Llama generates `script` whatever the prompt; -> its call log."""
    log = []

    class Llama:
        def __init__(self, **kwargs):
            log.append(("load", kwargs))

        def n_vocab(self):
            return vocab

        def reset(self):
            log.append(("reset",))

        def generate(self, tokens, **kwargs):
            log.append(("generate", list(tokens), kwargs))
            yield from script
            raise AssertionError("generated past the script")

    class LlamaPromptLookupDecoding:
        def __init__(self, max_ngram_size, num_pred_tokens):
            self.max_ngram_size, self.num_pred_tokens = max_ngram_size, num_pred_tokens

    module = types.ModuleType("llama_cpp")
    module.Llama, module.__version__ = Llama, "stand-in"
    module.llama_supports_gpu_offload = lambda: gpu
    speculative = types.ModuleType("llama_cpp.llama_speculative")
    speculative.LlamaPromptLookupDecoding = LlamaPromptLookupDecoding
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_speculative", speculative)
    return log


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return str(path)


def test_without_llama_cpp_both_peers_are_skipped_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    peers = LlamaCppPeers(PeersConfig(include=BOTH), DEFAULT, Target(), BOTH)
    assert set(peers.skipped) == set(BOTH) and not peers.active
    why = peers.skipped["llama.cpp:greedy"]
    assert "llama_cpp is not importable" in why and "pip install llama-cpp-python" in why and "\n" not in why


@pytest.mark.parametrize("case,expected", [
    ("no gpu build, cuda target", "built without GPU offload"),
    ("missing file", "no GGUF file at"),
    ("another target", "is not the embedded default"),
    ("other vocabulary", "has a vocabulary of 50, the target 100"),
])
def test_each_reason_a_peer_cannot_run_is_one_line(monkeypatch, gguf_file, tmp_path, case, expected):
    stand_in(monkeypatch, vocab=50 if case == "other vocabulary" else 100)
    target, component, gguf = Target(), DEFAULT, gguf_file
    if case == "no gpu build, cuda target":
        target = Target(Info(device=torch.device("cuda")))
    elif case == "missing file":
        gguf = str(tmp_path / "absent.gguf")
    elif case == "another target":
        component, gguf = Component(name="transformers", options={"path": str(tmp_path)}), "q4_1"
    peers = LlamaCppPeers(PeersConfig(include=BOTH, llama_cpp_gguf=gguf), component, target, BOTH)
    assert set(peers.skipped) == set(BOTH)
    assert expected in peers.skipped["llama.cpp:lookup"] and "\n" not in peers.skipped["llama.cpp:lookup"]


def test_a_peer_gets_our_prompt_tokens_and_stops_where_our_pipelines_stop(monkeypatch, gguf_file):
    log = stand_in(monkeypatch, script=(5, 6, 2, 8, 9))
    config = PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file, prompt_lookup_num_tokens=7, llama_cpp_max_ngram=3)
    peers = LlamaCppPeers(config, DEFAULT, Target(), BOTH)
    assert peers.active == BOTH and not peers.skipped
    loads = [kw for kind, *rest in log if kind == "load" for kw in rest]
    assert [kw["draft_model"] is None for kw in loads] == [True, False]  # lookup drafts, greedy does not
    draft = loads[1]["draft_model"]
    assert (draft.max_ngram_size, draft.num_pred_tokens) == (3, 7)
    assert all(kw["model_path"] == gguf_file and kw["n_gpu_layers"] == 0 for kw in loads)  # a CPU target: no offload

    assert peers.generate("llama.cpp:greedy", [1, 4, 4], 10, eos=[2]) == [5, 6, 2]  # keeps the end-of-sequence token
    assert peers.generate("llama.cpp:lookup", [1, 4, 4], 2, eos=[2]) == [5, 6]  # max new tokens
    calls = [entry for entry in log if entry[0] in ("reset", "generate")]
    assert [c[0] for c in calls] == ["reset", "generate", "reset", "generate"]  # no prompt reuse between calls
    assert calls[1][1] == [1, 4, 4] and calls[1][2]["temp"] == 0.0  # our tokens as they are, greedy
    assert peers.settings["gguf"] == gguf_file and peers.settings["n_ctx"] == config.llama_cpp_n_ctx


def test_a_prompt_that_does_not_fit_the_context_is_refused_in_one_line(monkeypatch, gguf_file):
    stand_in(monkeypatch)
    peers = LlamaCppPeers(PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file, llama_cpp_n_ctx=32), DEFAULT, Target(), BOTH)
    assert peers.generate("llama.cpp:greedy", [1] * 27, 5, eos=[2]) == [5, 6, 7, 8, 9]  # 32 positions: fits
    with pytest.raises(ValueError, match="need 42 positions; raise peers.llama_cpp_n_ctx \\(32\\)"):
        peers.generate("llama.cpp:lookup", [1] * 27, 5, eos=[2])  # + a 10-token draft


def test_llama_cpp_rows_are_named_and_keyed_apart_from_the_transformers_peers():
    assert [row_name(p) for p in ["generate", *BOTH]] == ["hf:generate", *BOTH]
    a, b = PeersConfig(llama_cpp_gguf="f16"), PeersConfig(llama_cpp_gguf="q4_1")
    assert peer_settings(a, "generate") == peer_settings(b, "generate")  # old `transformers` rows keep their keys
    assert peer_settings(a, "llama.cpp:greedy") != peer_settings(b, "llama.cpp:greedy")


def test_a_bench_run_without_llama_cpp_records_why_and_runs_the_rest(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    save_tiny_hf_folder(tmp_path / "model")
    (tmp_path / "mine.jsonl").write_text('{"text": "a b a b a b"}\n')
    (tmp_path / "bench.toml").write_text(f"""
name = "llama"
target = {{ name = "transformers", path = "{tmp_path / 'model'}" }}
datasets = [{{ name = "mine", path = "{tmp_path / 'mine.jsonl'}", field = "text" }}]
max_new_tokens = 4
warmup_tokens = 0
output = "{tmp_path / 'out'}"
[[pipelines]]
name = "ngram"
[peers]
include = ["llama.cpp:greedy", "llama.cpp:lookup"]
""")
    assert main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    rows = read_rows(tmp_path / "out" / "results" / "llama.jsonl")
    run = next(r for r in rows if r["kind"] == "run")
    assert set(run["skipped_peers"]) == set(BOTH)
    assert all("llama_cpp is not importable" in why for why in run["skipped_peers"].values())
    assert sorted(r["pipeline"] for r in rows if r["kind"] in ("plain", "spec", "peer")) == ["ngram", "plain"]
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "* peer `llama.cpp:greedy` skipped: llama_cpp is not importable" in md
