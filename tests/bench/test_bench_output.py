"""Where a bench writes: a user's run goes to a folder of the user's (./jetspec-bench under the
current folder), the repository's bench/results and bench/RESULTS.md only when named; every plot
says which bench, machine and date it shows."""

import json
from pathlib import Path

import matplotlib.figure

from jetspec.bench.config import DEFAULT_OUTPUT, BenchConfig
from jetspec.bench.plots import plot_title, write_plots
from jetspec.cli import main
from support.hf_folder import save_tiny_hf_folder

REPO_BENCH = Path(__file__).resolve().parents[2] / "bench"


def tree_state(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


def test_a_bench_config_that_names_no_output_writes_under_the_current_folder(tmp_path, monkeypatch):
    assert DEFAULT_OUTPUT == "jetspec-bench" and BenchConfig.model_fields["output"].default == DEFAULT_OUTPUT
    save_tiny_hf_folder(tmp_path / "model", seed=0)
    (tmp_path / "mine.jsonl").write_text(json.dumps({"text": "a b a b a b"}) + "\n")
    (tmp_path / "bench.toml").write_text(f"""
name = "mine"
target = {{ name = "transformers", path = "{tmp_path / 'model'}" }}
datasets = [{{ name = "mine", path = "{tmp_path / 'mine.jsonl'}", field = "text" }}]
max_new_tokens = 4
warmup_tokens = 0
[[pipelines]]
name = "ngram"
drafter = "ngram"
budget = 4
[peers]
include = []
""")
    before = {name: tree_state(REPO_BENCH / name) for name in ("results", "plots")}, (REPO_BENCH / "RESULTS.md").read_text()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    out = work / "jetspec-bench"
    assert (out / "results" / "mine.jsonl").is_file() and (out / "RESULTS.md").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["jetspec-bench"]
    after = {name: tree_state(REPO_BENCH / name) for name in ("results", "plots")}, (REPO_BENCH / "RESULTS.md").read_text()
    assert after == before, "a user's bench run touched the repository's bench/"


def test_every_plot_is_titled_with_the_bench_machine_and_date(tmp_path, monkeypatch):
    run = {"machine": "NVIDIA H200", "date": "2026-12-02 08:01 UTC"}
    summaries = [
        {"dataset": "d", "kind_of": "spec", "pipeline": "ngram@4", "budget": 4, "tau": 1.5, "speedup": 1.2, **run},
        {"dataset": "d", "kind_of": "plain", "pipeline": "plain", "budget": 0, "tau": 1.0, "speedup": None, **run},
    ]
    assert plot_title("smoke", summaries) == "smoke · NVIDIA H200 · 2026-12-02 08:01 UTC"
    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw))
    written = write_plots(summaries, tmp_path, "smoke")
    assert len(written) == 2 and titles == [plot_title("smoke", summaries)] * 2
