"""Calibrated tree scores for a parallel head: P(a depth-d candidate is accepted | its parent was).

A parallel head's depth-d distribution q_d is a marginal over the futures of the anchor: it does
not see the drafted path. Greedy verification accepts a depth-d node iff its parent was accepted
(the path so far IS the target's continuation) and its token is the target's next one. So what a
tree should rank is the conditional acceptance, which the marginal only approximates (deep
marginals spread their mass over futures the accepted path has already ruled out).

Fit on held-out answers (a corpus's held-out questions, their greedy answers: what greedy
verification accepts; `rows.split_rows`): for anchors at random answer positions, depth d, and
each of the head's top-K candidates c there, taken only where the true tokens at depths 1..d-1
are each among that depth's top K (a tree built from these candidates can hold the true path):

    y = [c == the answer's token at depth d],   l = log q_d(c)
    P(y = 1 | l) = sigmoid(a_d l + b_d)        (per depth; Newton's method on the log-likelihood)

The drafter then scores a candidate log sigmoid(a_d l + b_d) instead of l (`HeadOptions.calibrated`).
With a_d > 0 a depth's order is kept; a path's score becomes the log of its acceptance probability
under the model, so best-first picks the B nodes most likely accepted: the tree of the highest
expected tau = 1 + sum over nodes of P(node accepted).

    python -m jetspec.drafters.head.calibration --checkpoint DIR --target HF_FOLDER --corpus CORPUS_DIR \
        [--rows 256] [--anchors 32] [--seed 0]      -> DIR/calibration.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.errors import CheckpointError

FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    slope: tuple[float, ...]  # a_d, d = 1 .. D
    bias: tuple[float, ...]  # b_d

    def apply(self, logp: torch.Tensor) -> torch.Tensor:
        """logp [depths, K] (row d - 1: depth d) -> log sigmoid(a_d logp + b_d), same shape and dtype."""
        d = logp.shape[0]
        if d > len(self.slope):
            raise CheckpointError(f"the calibration covers {len(self.slope)} depths; the head drafted {d}")
        a = torch.tensor(self.slope[:d], device=logp.device, dtype=torch.float32)[:, None]  # [depths, 1]
        b = torch.tensor(self.bias[:d], device=logp.device, dtype=torch.float32)[:, None]
        return F.logsigmoid(a * logp.float() + b).to(logp.dtype)

    def save(self, folder: str | Path, meta: dict) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps({"slope": list(self.slope), "bias": list(self.bias), **meta}, indent=1) + "\n")
        return path

    @staticmethod
    def load(folder: str | Path) -> "Calibration":
        path = Path(folder) / FILE
        if not path.is_file():
            raise CheckpointError(f"head checkpoint {folder} has no {FILE}; make it with "
                                  f"python -m jetspec.drafters.head.calibration --checkpoint {folder} ...")
        try:
            raw = json.loads(path.read_text())
            slope, bias = tuple(float(x) for x in raw["slope"]), tuple(float(x) for x in raw["bias"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a calibration (slope and bias per depth): {e}") from None
        if len(slope) != len(bias) or not slope or min(slope) <= 0:
            raise CheckpointError(f"{path}: slope and bias need one positive slope per depth and as many biases")
        return Calibration(slope, bias)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, steps: int = 50, ridge: float = 1e-6) -> tuple[float, float]:
    """x, y [S] -> (a, b) maximising sum y log s + (1 - y) log (1 - s), s = sigmoid(a x + b): Newton's
    method on the two parameters (the log-likelihood is concave), a small ridge for separable data."""
    x, y = x.double(), y.double()
    theta = torch.zeros(2, dtype=torch.float64)  # (a, b)
    design = torch.stack([x, torch.ones_like(x)], dim=1)  # [S, 2]
    for _ in range(steps):
        s = torch.sigmoid(design @ theta)  # [S]
        grad = design.T @ (y - s) - ridge * theta  # [2]
        hess = -(design.T * (s * (1 - s))) @ design - ridge * torch.eye(2, dtype=torch.float64)  # [2, 2]
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if step.abs().max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def candidates_and_labels(logp: torch.Tensor, tokens: torch.Tensor, truth: torch.Tensor,
                          valid: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fit's samples per depth. logp, tokens [S, D, K] (anchor s, depth d + 1, rank), truth [S, D]
    the answer's token at each depth, valid [S, D] whether that depth has a true token -> per depth,
    (l [M], y [M]) over the anchors whose true tokens at the depths above are each in their top K."""
    hit = (tokens == truth[..., None]).any(-1) & valid  # [S, D] the true token is a candidate there
    above = torch.cat([torch.ones_like(hit[:, :1]), hit[:, :-1].long().cumprod(1).bool()], dim=1)  # [S, D]
    out = []
    for d in range(logp.shape[1]):
        use = above[:, d] & valid[:, d]  # [S]
        out.append((logp[use, d].reshape(-1), (tokens[use, d] == truth[use, d, None]).reshape(-1).float()))
    return out


@torch.no_grad()
def head_candidates(head, model, batch: dict, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch (`objective.make_batch`, no reveal) through the frozen target and the head, as the
    drafter drafts: -> logp, tokens [S, D, K] (top K of q_d, d = 1 .. B - 1), truth [S, D], valid [S, D]
    for the S = Bt * A anchors."""
    from .frozen_target import teacher_forward
    from .masks import block_mask
    from .objective import _block_inputs

    c = head.config
    ctx_hidden, _ = teacher_forward(model, batch["ids"], batch["attn"], c.target_layers)  # [Bt, T, k, H]
    bt, t = batch["ids"].shape
    fused = head.fuse_context(ctx_hidden)  # [Bt, T, H]
    context = head.context_kv(fused, torch.arange(t, device=fused.device).expand(bt, t))
    x, pos, p, supervised, depth_token = _block_inputs(head, model, batch)
    mask = block_mask(batch["anchors"], c.block_size, t, c.causal)  # [Bt, A*B, T + A*B]
    h = head(x, pos, context, mask).view(*p.shape, -1)[:, :, 1:]  # [Bt, A, D, H]: slots 1 .. B - 1
    s, depths = bt * p.shape[1], c.block_size - 1
    top = torch.log_softmax(model.get_output_embeddings()(h).float(), dim=-1).topk(k, dim=-1)  # [Bt, A, D, K]
    return (top.values.reshape(s, depths, k), top.indices.reshape(s, depths, k),
            depth_token[:, :, 1:].reshape(s, depths), supervised[:, :, 1:].reshape(s, depths))


def calibrate(checkpoint: str, target: str, corpus: str, rows: int = 256, anchors: int = 32, k: int = 8,
              seed: int = 0, batch_size: int = 8) -> tuple[Calibration, dict]:
    """Fit the per-depth model on the head's held-out questions (`split_rows` with its own training's
    `max_len` and `eval_rows`, so no answer it trained on) -> (calibration, what was fitted on)."""
    from .checkpoint import load_head
    from .corpus import load_corpus
    from .frozen_target import load_hf_target
    from .objective import make_batch
    from .rows import split_rows
    from .train import TrainConfig

    head = load_head(checkpoint).eval()
    trained = head.config.extra.get("training", {}).get("config", {})
    max_len, eval_rows = int(trained.get("max_len", 1024)), int(trained.get("eval_rows", rows))
    model, tokenizer = load_hf_target(target, "cpu", torch.float32)
    data = load_corpus(corpus)
    held = split_rows(data, max_len, eval_rows)[1][:rows]
    if not held:
        raise CheckpointError(f"corpus {corpus} holds out no questions to calibrate on")
    cfg = TrainConfig(kind=head.config.kind, anchors=anchors, block_size=head.config.block_size, max_len=max_len, reveal_prob=0.0)
    g = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    samples: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for i in range(0, len(held), batch_size):
        b = make_batch(data, held[i : i + batch_size], cfg, g, pad, "cpu")
        samples.append(candidates_and_labels(*head_candidates(head, model, b, k)))
    slope, bias, counts, rates = [], [], [], []
    for d in range(head.config.block_size - 1):
        x = torch.cat([s[d][0] for s in samples])
        y = torch.cat([s[d][1] for s in samples])
        a, b = fit_logistic(x, y)
        slope.append(a), bias.append(b), counts.append(int(y.numel())), rates.append(round(float(y.mean()), 4) if y.numel() else 0.0)
    return Calibration(tuple(slope), tuple(bias)), {"questions": len(held), "anchors_per_question": anchors, "top_k": k,
                                                    "samples_by_depth": counts, "accepted_share_by_depth": rates}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--target", required=True, help="the target's Hugging Face folder (or .gguf)")
    ap.add_argument("--corpus", required=True, help="the corpus folder the head was trained on")
    ap.add_argument("--rows", type=int, default=256, help="held-out questions used (at most the head's own)")
    ap.add_argument("--anchors", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    cal, meta = calibrate(args.checkpoint, args.target, args.corpus, args.rows, args.anchors, args.top_k, args.seed)
    command = "python -m jetspec.drafters.head.calibration " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    path = cal.save(args.checkpoint, {**meta, "command": command})
    for d, (a, b) in enumerate(zip(cal.slope, cal.bias), 1):
        print(f"depth {d}: P(accept | parent) = sigmoid({a:.3f} logq + {b:.3f})  samples {meta['samples_by_depth'][d - 1]}"
              f"  accepted {meta['accepted_share_by_depth'][d - 1]:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
