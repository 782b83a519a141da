"""The llama.cpp peers (`llama.cpp:greedy`, `llama.cpp:lookup`): a peer that cannot run leaves one
line saying why in the run row and RESULTS.md, and no prompt rows; one that runs is fed our prompt
tokens and stops where our pipelines stop. llama.cpp runs in its own process (`llama_cpp_worker.py`),
which never imports torch, and a worker that dies is a one-line reason too. Here `llama_cpp` is
absent or a stand-in package the worker imports; the real one runs in test_llama_cpp_real.py."""

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from support.hf_folder import VOCAB, save_tiny_hf_folder

from jetspec.bench.config import PeersConfig
from jetspec.bench.llama_cpp_peer import WORKER, LlamaCppError, LlamaCppPeers
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


FAKE_LLAMA_CPP = """
import json, os, signal, sys

__version__ = "stand-in"
SCRIPT, VOCAB, GPU, DIE = {script!r}, {vocab!r}, {gpu!r}, {die!r}
LOG = os.path.join(os.path.dirname(__file__), "log.jsonl")
calls = 0


def log(*entry):
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\\n")


def die():
    print("ggml_cuda_error: a stand-in crash", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)


log("import", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jetspec")))


def llama_supports_gpu_offload():
    return GPU


class Llama:
    def __init__(self, **kwargs):
        if DIE == "load":
            die()
        if not os.path.exists(kwargs["model_path"]):
            raise ValueError(f"Model path does not exist: {{kwargs['model_path']}}")  # as the real one
        draft = kwargs.pop("draft_model")
        log("load", {{**kwargs, "draft_model": draft and [draft.max_ngram_size, draft.num_pred_tokens]}})

    def n_vocab(self):
        return VOCAB

    def reset(self):
        log("reset")

    def generate(self, tokens, **kwargs):
        global calls
        calls += 1
        if DIE == calls:
            die()
        log("generate", list(tokens), kwargs)
        yield from SCRIPT
        raise AssertionError("generated past the script")
"""

FAKE_SPECULATIVE = """
class LlamaPromptLookupDecoding:
    def __init__(self, max_ngram_size, num_pred_tokens):
        self.max_ngram_size, self.num_pred_tokens = max_ngram_size, num_pred_tokens
"""


def stand_in(monkeypatch, tmp_path, script=(5, 6, 7, 8, 9), vocab=100, gpu=False, die=None):
    """A `llama_cpp` package on disk (where the worker process imports it) whose Llama generates
    `script` whatever the prompt, and kills its process with SIGSEGV if `die` says when ("load", or
    the n-th generate call); -> a function reading its call log."""
    package = tmp_path / "site" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_LLAMA_CPP.format(script=tuple(script), vocab=vocab, gpu=gpu, die=die))
    (package / "llama_speculative.py").write_text(FAKE_SPECULATIVE)
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)  # a real one imported by another test
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    log = package / "log.jsonl"
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


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
    stand_in(monkeypatch, tmp_path, vocab=50 if case == "other vocabulary" else 100)
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


def test_a_peer_gets_our_prompt_tokens_and_stops_where_our_pipelines_stop(monkeypatch, gguf_file, tmp_path):
    log = stand_in(monkeypatch, tmp_path, script=(5, 6, 2, 8, 9))
    config = PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file, prompt_lookup_num_tokens=7, llama_cpp_max_ngram=3)
    peers = LlamaCppPeers(config, DEFAULT, Target(), BOTH)
    assert peers.active == BOTH and not peers.skipped
    loads = [kw for kind, *rest in log() if kind == "load" for kw in rest]
    assert [kw["draft_model"] for kw in loads] == [None, [3, 7]]  # lookup drafts (n-grams of 3, 7 tokens), greedy does not
    assert all(kw["model_path"] == gguf_file and kw["n_gpu_layers"] == 0 for kw in loads)  # a CPU target: no offload

    assert peers.generate("llama.cpp:greedy", [1, 4, 4], 10, eos=[2]) == [5, 6, 2]  # keeps the end-of-sequence token
    assert peers.generate("llama.cpp:lookup", [1, 4, 4], 2, eos=[2]) == [5, 6]  # max new tokens
    calls = [entry for entry in log() if entry[0] in ("reset", "generate")]
    assert [c[0] for c in calls] == ["reset", "generate", "reset", "generate"]  # no prompt reuse between calls
    assert calls[1][1] == [1, 4, 4] and calls[1][2]["temp"] == 0.0  # our tokens as they are, greedy
    assert peers.settings["gguf"] == gguf_file and peers.settings["n_ctx"] == config.llama_cpp_n_ctx


def test_a_prompt_that_does_not_fit_the_context_is_refused_in_one_line(monkeypatch, gguf_file, tmp_path):
    stand_in(monkeypatch, tmp_path)
    peers = LlamaCppPeers(PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file, llama_cpp_n_ctx=32), DEFAULT, Target(), BOTH)
    assert peers.generate("llama.cpp:greedy", [1] * 27, 5, eos=[2]) == [5, 6, 7, 8, 9]  # 32 positions: fits
    with pytest.raises(ValueError, match="need 42 positions; raise peers.llama_cpp_n_ctx \\(32\\)"):
        peers.generate("llama.cpp:lookup", [1] * 27, 5, eos=[2])  # + a 10-token draft


def test_the_worker_loads_llama_cpp_in_a_process_without_torch_or_jetspec(monkeypatch, gguf_file, tmp_path):
    log = stand_in(monkeypatch, tmp_path)
    assert "torch" in sys.modules  # here, yes
    peers = LlamaCppPeers(PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file), DEFAULT, Target(), BOTH)
    assert peers.active == BOTH
    assert log()[0] == ["import", []]  # what of torch and jetspec the worker held when llama_cpp loaded: nothing
    peers.close()


def test_a_worker_that_cannot_load_answers_one_error_line_and_exits_nonzero(monkeypatch, tmp_path):
    stand_in(monkeypatch, tmp_path)
    absent = str(tmp_path / "absent.gguf")
    request = {"model_path": absent, "n_gpu_layers": 0, "n_ctx": 64, "flash_attn": True, "require_gpu": False,
               "peers": ["llama.cpp:greedy"], "max_ngram": 2, "num_pred_tokens": 10, "llama_cpp_dir": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, str(WORKER)], input=json.dumps(request) + "\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"error": f"llama.cpp cannot load absent.gguf: ValueError: Model path does not exist: {absent}"}]


@pytest.mark.parametrize("die", ["load", 2])
def test_a_worker_that_dies_is_a_one_line_reason_not_an_exception_and_keeps_what_it_gave(monkeypatch, gguf_file, tmp_path, die):
    stand_in(monkeypatch, tmp_path, die=die)
    peers = LlamaCppPeers(PeersConfig(include=BOTH, llama_cpp_gguf=gguf_file), DEFAULT, Target(), BOTH)
    why = "llama.cpp worker exited with signal SIGSEGV: ggml_cuda_error: a stand-in crash"
    if die == "load":
        assert peers.skipped == {p: why for p in BOTH} and not peers.active
        return
    assert peers.generate("llama.cpp:greedy", [1, 4], 3, eos=[2]) == [5, 6, 7]
    for _ in range(2):  # the call it died in, and any after
        with pytest.raises(LlamaCppError) as e:
            peers.generate("llama.cpp:lookup", [1, 4], 3, eos=[2])
        assert str(e.value) == why


def bench_config(tmp_path, texts: list[str], peers: str) -> None:
    """tmp_path/bench.toml: a tiny `transformers` target, `texts` as its one prompt set, an n-gram
    pipeline, and `peers` as the [peers] table's lines; rows go to tmp_path/out."""
    save_tiny_hf_folder(tmp_path / "model")
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
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
{peers}
""")


def test_a_bench_run_whose_worker_dies_keeps_the_rows_before_and_records_why(tmp_path, monkeypatch, gguf_file):
    stand_in(monkeypatch, tmp_path, script=(5, 6, 7, 8), vocab=VOCAB, die=2)
    bench_config(tmp_path, ["a b a b a b", "b a b a"], f'include = ["llama.cpp:greedy"]\nllama_cpp_gguf = "{gguf_file}"')
    main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"])
    rows = [r for r in read_rows(tmp_path / "out" / "results" / "llama.jsonl") if r["kind"] == "peer"]
    assert [r["pipeline"] for r in rows] == ["llama.cpp:greedy"] * 2
    assert rows[0]["new_tokens"] == 4 and "error" not in rows[0]  # the prompt before it died
    assert rows[1]["error"] == "LlamaCppError: llama.cpp worker exited with signal SIGSEGV: ggml_cuda_error: a stand-in crash"


def test_a_bench_run_ends_its_llama_cpp_worker(tmp_path, monkeypatch, gguf_file):
    stand_in(monkeypatch, tmp_path, script=(5, 6, 7, 8), vocab=VOCAB)
    started = []
    popen = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr("jetspec.bench.llama_cpp_peer.subprocess.Popen", spy)
    bench_config(tmp_path, ["a b a b a b"], f'include = ["llama.cpp:greedy"]\nllama_cpp_gguf = "{gguf_file}"')
    assert main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    (worker,) = started
    assert worker.poll() == 0  # it was told the run is over (end of input) and exited, not left running


def test_llama_cpp_rows_are_named_and_keyed_apart_from_the_transformers_peers():
    assert [row_name(p) for p in ["generate", *BOTH]] == ["hf:generate", *BOTH]
    a, b = PeersConfig(llama_cpp_gguf="f16"), PeersConfig(llama_cpp_gguf="q4_1")
    assert peer_settings(a, "generate") == peer_settings(b, "generate")  # old `transformers` rows keep their keys
    assert peer_settings(a, "llama.cpp:greedy") != peer_settings(b, "llama.cpp:greedy")


def test_a_bench_run_without_llama_cpp_records_why_and_runs_the_rest(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    bench_config(tmp_path, ["a b a b a b"], 'include = ["llama.cpp:greedy", "llama.cpp:lookup"]')
    assert main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    rows = read_rows(tmp_path / "out" / "results" / "llama.jsonl")
    run = next(r for r in rows if r["kind"] == "run")
    assert set(run["skipped_peers"]) == set(BOTH)
    assert all("llama_cpp is not importable" in why for why in run["skipped_peers"].values())
    assert sorted(r["pipeline"] for r in rows if r["kind"] in ("plain", "spec", "peer")) == ["ngram", "plain"]
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "* peer `llama.cpp:greedy` skipped: llama_cpp is not importable" in md
