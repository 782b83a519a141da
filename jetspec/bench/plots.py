"""PNG plots of the summary rows (matplotlib, Agg backend: no display needed).

* `<name>_tau_vs_budget.png`: τ against budget, one line per drafter, one panel per dataset
* `<name>_speedup.png`: speedup over our plain decoding, bars per pipeline, grouped by dataset
* `write_throughput_plot`: tokens/s against batch size, one line per engine (bench/batched_throughput.py)

Each figure is titled with the bench's name and the machine and date that measured its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_title(name: str, summaries: list[dict[str, Any]]) -> str:
    """`<name> · <machine> · <date>` (the summaries' machines, the latest date): a plot read alone
    still says where and when it was measured."""
    machine = " + ".join(sorted({str(s["machine"]) for s in summaries if s.get("machine")}))
    date = max((str(s["date"]) for s in summaries if s.get("date")), default="")
    return " · ".join(part for part in (name, machine, date) if part)


def write_plots(summaries: list[dict[str, Any]], folder: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    datasets = sorted({s["dataset"] for s in summaries})
    spec = [s for s in summaries if s["kind_of"] == "spec" and s["tau"] is not None]
    written = []

    title = plot_title(name, summaries)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.2), squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=9)
    for ax, dataset in zip(axes[0], datasets):
        lines: dict[str, list[tuple[int, float]]] = {}
        for s in spec:
            if s["dataset"] == dataset:
                label = s["pipeline"].split("@")[0]
                lines.setdefault(label, []).append((s["budget"], s["tau"]))
        for label, points in sorted(lines.items()):
            points.sort()
            ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(dataset)
        ax.set_xlabel("budget (draft nodes)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("τ (tokens per round)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder / f"{name}_tau_vs_budget.png"))

    bars = [s for s in summaries if s["kind_of"] != "plain" and s["speedup"] is not None]
    if not bars:  # nothing was timed (a replay run): no speedup plot
        return written
    pipelines = sorted({s["pipeline"] for s in bars})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(datasets) * max(len(pipelines), 1) / 3), 3.6))
    fig.suptitle(title, fontsize=9)
    width = 0.8 / max(len(pipelines), 1)
    for j, pipeline in enumerate(pipelines):
        ys = [next((s["speedup"] for s in bars if s["dataset"] == d and s["pipeline"] == pipeline), 0.0) for d in datasets]
        ax.bar([i + j * width for i in range(len(datasets))], ys, width, label=pipeline)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(datasets))], datasets)
    ax.set_ylabel("speedup over plain decoding")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    written.append(_save(fig, folder / f"{name}_speedup.png"))
    return written


def write_throughput_plot(rows: list[dict[str, Any]], path: Path, name: str) -> Path:
    """rows: `batched` rows (engine, batch_size, tokens_per_s, machine, date) -> one PNG, tokens/s
    against batch size on log-log axes, a line per engine (plain, spec, hf; split by `cuda_graphs`
    where the rows hold both), each point labelled with its tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    fig.suptitle(plot_title(name, rows), fontsize=9)
    mixed = len({r.get("cuda_graphs") for r in rows if r["engine"] != "hf"}) > 1

    def line(r: dict[str, Any]) -> str:  # the engine, and eager or graphed where a plot shows both
        return r["engine"] + (f" ({'graphs' if r.get('cuda_graphs') else 'eager'})" if mixed and r["engine"] != "hf" else "")

    for label in sorted({line(r) for r in rows}):
        points = sorted((r["batch_size"], r["tokens_per_s"]) for r in rows if line(r) == label)
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=label)
        for b, t in points:
            ax.annotate(f"{t:.0f}", (b, t), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (sequences decoded together)")
    ax.set_ylabel("tokens / s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
