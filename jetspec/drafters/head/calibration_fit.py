"""`jetspec calibrate-head`: measure a parallel head's acceptance rates (`calibration.py`) on text the target wrote.

    jetspec calibrate-head --head HEAD_DIR --corpus CORPUS_DIR [--target default] [--rows 256]

(`jetspec train-head` writes one beside every parallel head it saves, from its held-out rows.)

The text: the greedy answers of the corpus's held-out questions (`rows.split_rows`, the rows the head
was validated on and never trained on; a corpus is checked against the evaluation sets when it is
made). At every anchor a of an answer the head drafts as the drafter does (one forward: [x_a, MASK
x (B - 1)], context keys < a) and keeps the top-k of each depth; the truth is the answer's next
tokens, cut where the text stops being the target's own greedy choice (its argmax here): that is
what verification compares a draft with.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ...core.errors import InputError
from .calibration import FILE, HeadCalibration, weights_digest
from .data import TokenData
from .frozen_target import teacher_forward
from .masks import block_mask
from .model import DraftHead
from .objective import _block_inputs

ANCHORS_PER_FORWARD = 48  # blocks in one head forward (memory: [anchors, B, V] log-probs)


@torch.no_grad()
def head_walks(head: DraftHead, model: Any, data: TokenData, rows: Iterable[int], top_k: int,
               max_len: int = 1024) -> Iterator[tuple[list, list, list]]:
    """One walk per anchor of each row's answer: (logp [D][k], tokens [D][k], truth [n <= D])."""
    c = head.config
    if not c.uses_mask_slots:
        raise InputError(f"a {c.kind} head drafts depth by depth; only parallel heads (causal, dflash) are calibrated")
    device = next(model.parameters()).device
    lm_head = model.get_output_embeddings()
    for s in rows:
        ids = data.row(s)[:max_len].long()[None].to(device)  # [1, T]
        t, start = ids.shape[1], int(data.prompt_lens[s])
        if t < start + 2:
            continue
        ctx_hidden, final = teacher_forward(model, ids, torch.ones_like(ids), c.target_layers)  # [1, T, k, H], [1, T, H]
        greedy = ids[0, 1:] == lm_head(final[0, :-1]).argmax(-1)  # [T - 1]: token j + 1 is the target's argmax after j
        fused = head.fuse_context(ctx_hidden.to(head.fuse.weight.dtype))
        context = head.context_kv(fused, torch.arange(t, device=device)[None])
        every = torch.arange(start - 1, t - 1, device=device)  # anchors: the prompt's last token .. the last but one
        for i in range(0, every.numel(), ANCHORS_PER_FORWARD):
            anchors = every[i : i + ANCHORS_PER_FORWARD][None]  # [1, A]
            b = {"ids": ids, "lens": torch.tensor([t], device=device), "anchors": anchors, "reveal": torch.zeros_like(anchors)}
            x, pos, _, _, _ = _block_inputs(head, model, b)
            h = head(x, pos, context, block_mask(anchors, c.block_size, t, c.causal))  # [1, A*B, H]
            h = h.view(anchors.shape[1], c.block_size, -1)[:, 1:]  # [A, D, H]: slot d drafts depth d
            logp, tokens = torch.log_softmax(lm_head(h.to(lm_head.weight.dtype)).float(), -1).topk(top_k, dim=-1)  # [A, D, k]
            for a, lp, tk in zip(anchors[0].tolist(), logp.tolist(), tokens.tolist()):
                truth = []
                for j in range(a + 1, min(a + 1 + len(lp), t)):  # depth j - a: token j, if the target's own choice
                    if not greedy[j - 1]:
                        break
                    truth.append(int(ids[0, j]))
                yield lp, tk, truth


def calibrate(head: DraftHead, model: Any, data: TokenData, rows: list[int], top_k: int, source: dict | None = None,
              progress: bool = False) -> HeadCalibration:
    """The head's rates on `rows` of `data` (its held-out answers), a progress bar over the rows."""
    if not rows:
        raise InputError("no held-out answers to calibrate the head on")
    source = {**(source or {}), "rows": len(rows), "top_k": top_k, "target_name": data.meta.get("target_name"),
              "target_fingerprint": data.meta.get("target_fingerprint"),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
    bar = tqdm(rows, desc="calibrate-head", unit="answer", disable=not progress)
    return HeadCalibration.fit(head_walks(head, model, data, bar, top_k), head.config.block_size - 1, source)


def main(argv: list[str] | None = None, formatter_class=argparse.HelpFormatter) -> int:
    from .checkpoint import WEIGHTS, load_head
    from .corpus import load_corpus
    from .frozen_target import hf_identity, load_hf_target
    from .options import HeadOptions
    from .rows import split_rows

    ap = argparse.ArgumentParser(prog="jetspec calibrate-head", description=__doc__.split("\n\n")[0], formatter_class=formatter_class)
    ap.add_argument("--head", required=True, help=f"the head's folder (head.json, head.safetensors); {FILE} is written there")
    ap.add_argument("--corpus", required=True, help="the corpus folder the head was trained on (`jetspec make-corpus`)")
    ap.add_argument("--target", default="default", help="Hugging Face folder (or .gguf) of the target; default: the embedded SmolLM2")
    ap.add_argument("--rows", type=int, default=None, help="held-out answers measured (default: as many as the head was validated on)")
    ap.add_argument("--top-k", type=int, default=HeadOptions.model_fields["top_k"].default, help="candidates per depth, as the drafter keeps")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda where there is one)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    command = "jetspec calibrate-head " + " ".join(shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv))
    head, data = load_head(args.head).eval(), load_corpus(args.corpus)  # what the user named, before the target loads
    target = args.target
    if target == "default":
        from ...targets.default_model import default_model_path

        target = str(default_model_path())
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, _ = load_hf_target(target, device, torch.float32)
    head = head.to(device)
    if data.meta.get("target_fingerprint") != hf_identity(model, Path(target).name)["target_fingerprint"]:
        raise InputError(f"corpus {args.corpus} holds answers of target {data.meta.get('target_name')!r}, not of this target")
    training = head.config.extra.get("training", {}) if isinstance(head.config.extra, dict) else {}
    held = split_rows(data, 1024, int(training.get("eval_rows") or 256))[1]
    rows = held[: args.rows] if args.rows else held
    source = {"command": command, "corpus": str(args.corpus), "head": str(args.head),
              "head_sha256": weights_digest(Path(args.head) / WEIGHTS)}  # fmt: skip
    cal = calibrate(head, model, data, rows, args.top_k, source,
                    progress=not args.no_progress)
    path = cal.save(Path(args.head) / FILE)
    print(f"{path}: {len(rows)} held-out answers; rate of a rank-1 parent's child by depth (q bins 0.5-0.6 / 0.8-0.9):")
    for d in range(cal.depths):
        print(f"  depth {d + 1}: {cal.rates[d][1 if d else 0][9]:.2f} / {cal.rates[d][1 if d else 0][12]:.2f}")
    return 0
