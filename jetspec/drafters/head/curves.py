"""Training curves of a head as one PNG, from its `log.jsonl` (matplotlib, Agg: no display needed).

Three panels: distillation loss (forward KL) by step, training rows and validation points; the
validation chain τ (1 + mean length of the rank-1 chain that matches the held-out greedy answer,
the τ of a linear draft of the block's depth); rank-1 accuracy by depth (given the true prefix)
at each validation, darker = later. Calls of an accumulated run are marked by dotted lines.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, validation rows, call rows) of a log.jsonl; a torn last line is skipped."""
    train, evals, calls = [], [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval" in row:
            evals.append(row)
        elif "run" in row:
            calls.append(row["run"])
        elif "kl" in row:
            train.append(row)
    return train, evals, calls


def write_curves(log_path: Path, png_path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals, calls = read_log(Path(log_path))
    fig, (loss_ax, tau_ax, depth_ax) = plt.subplots(1, 3, figsize=(14, 3.6))
    loss_ax.plot([r["step"] for r in train], [r["kl"] for r in train], lw=0.8, alpha=0.6, label="train")
    loss_ax.plot([r["step"] for r in evals], [r["eval"]["eval_kl"] for r in evals], "o-", ms=3, label="validation")
    loss_ax.set(xlabel="step", ylabel="forward KL (nats)", yscale="log", title="loss")
    loss_ax.legend(fontsize=8)
    tau_ax.plot([r["step"] for r in evals], [r["eval"]["eval_tau_chain"] for r in evals], "o-", ms=3)
    tau_ax.set(xlabel="step", ylabel="chain τ (validation)", title="rank-1 chain τ")
    for ax in (loss_ax, tau_ax):
        for c in calls[:-1]:
            ax.axvline(c["to_step"], color="grey", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(evals):
        acc = r["eval"].get("eval_acc_by_depth") or []
        label = f"step {r['step']}" if i in (0, len(evals) - 1) else None
        depth_ax.plot(range(1, len(acc) + 1), acc, color=cmap(i / max(1, len(evals) - 1)), lw=1, label=label)
    depth_ax.set(xlabel="depth", ylabel="rank-1 accuracy (validation)", title="accuracy by depth", ylim=(0, 1))
    depth_ax.grid(alpha=0.3)
    if evals:
        depth_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path.with_suffix(".tmp.png"), dpi=100)
    plt.close(fig)
    png_path.with_suffix(".tmp.png").replace(png_path)
    return png_path
