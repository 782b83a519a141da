"""`jetspec fit-lookup`: measure a lookup calibration (`lookup_calibration.py`) on text the target wrote.

    jetspec fit-lookup --corpus CORPUS_DIR --out HEAD_DIR/lookup.json [--rows 4000]

(`jetspec train-head` writes one beside every head it saves, from the answers it trained on.)

The text is the greedy answers of a self-distilled corpus (`jetspec make-corpus`): what plain
decoding of the target produces, i.e. what verification will compare drafts with. Never the
evaluation sets (the corpus is checked against them when it is made).

The statistic, per answer (context = prompt + the answer so far, as decoding sees it): at every
position, propose as the `ngram` drafter does (same options, counts as edge scores), then walk the
true continuation down the trie. Every child of a node on the true path is one trial of its cell
(n, depth, count fraction); a success when it is the true next token. The walk stops where the
true token is not among the children: deeper edges are never verified after a rejection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from typing import Iterable, Sequence

from ..core.errors import InputError
from ..core.interfaces import DecodeState
from ..core.proposal import path_counts
from .head.data import TokenData
from .lookup_calibration import BUCKETS, DEPTHS, LookupCalibration, fraction_bucket
from .ngram import NgramDrafter, NgramOptions


def fit(rows: Iterable[tuple[Sequence[int], int]], options: NgramOptions | None = None,
        source: dict | None = None) -> LookupCalibration:
    """rows: (tokens, answer_start) — a prompt and its answer as one token list, the answer from
    `answer_start` on. -> the calibration of the `ngram` drafter with `options` on them."""
    o = (options or NgramOptions()).model_copy(update={"calibration": None})
    trials = [[[0] * BUCKETS for _ in range(DEPTHS)] for _ in range(o.n_max)]  # [n][d][f]
    successes = [[[0] * BUCKETS for _ in range(DEPTHS)] for _ in range(o.n_max)]
    for tokens, start in rows:
        tokens = [int(t) for t in tokens]
        drafter = NgramDrafter(o)
        context = tokens[: max(start, 1)]
        drafter.reset(DecodeState(tokens=context, prompt_len=len(context)))
        for t in range(len(context), len(tokens)):  # context = tokens[:t]; its last token is the root
            found = drafter.match(context)
            if found is not None:
                n, ends = found
                _walk(path_counts(context[e : e + o.max_depth] for e in ends), tokens[t : t + o.max_depth],
                      trials[n - 1], successes[n - 1])
            context.append(tokens[t])
    return LookupCalibration.from_counts(o.n_min, o.n_max, trials, successes, source)


def _walk(counts: dict[tuple[int, ...], int], truth: Sequence[int], trials: list, successes: list) -> None:
    """Count the trials and successes of every child of every node on the true path (see module doc)."""
    children: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for path, c in counts.items():
        if path:
            children.setdefault(path[:-1], []).append((path[-1], c))
    path: tuple[int, ...] = ()
    for depth, true in enumerate(truth, 1):
        kids = children.get(path)
        if not kids:
            return
        d, whole = min(depth, DEPTHS) - 1, counts[path]
        for token, c in kids:
            f = fraction_bucket(c, whole)
            trials[d][f] += 1
            successes[d][f] += token == true
        path += (true,)  # where `true` was not among them, this path has no children: the walk ends


def fit_answers(data: TokenData, rows: int = 4000, options: NgramOptions | None = None, source: dict | None = None) -> LookupCalibration:
    """The calibration on `rows` greedy answers of `data` (a corpus, or `train-head`'s own answers:
    greedy all of them), evenly spaced over it; a one-line InputError where it has none."""
    temperature = data.columns.get("temperature")
    greedy = list(range(len(data))) if temperature is None else (temperature == 0).nonzero().flatten().tolist()
    if not greedy or rows < 1:
        raise InputError("no greedy answers to measure prompt lookup on" if not greedy else f"rows must be at least 1, got {rows}")
    chosen = greedy[:: max(1, len(greedy) // rows)][:rows]
    source = {**(source or {}), "rows": len(chosen), "target_name": data.meta.get("target_name"),
              "target_fingerprint": data.meta.get("target_fingerprint"),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
    return fit(((data.row(s).tolist(), int(data.prompt_lens[s])) for s in chosen), options, source)


def main(argv: list[str] | None = None, formatter_class=argparse.HelpFormatter) -> int:
    from .head.corpus import load_corpus

    ap = argparse.ArgumentParser(prog="jetspec fit-lookup", description=__doc__.split("\n\n")[0], formatter_class=formatter_class)
    ap.add_argument("--corpus", required=True, help="a corpus folder (`jetspec make-corpus`)")
    ap.add_argument("--out", required=True, help="the calibration file to write (the `jetspec` drafter reads HEAD_DIR/lookup.json)")
    ap.add_argument("--rows", type=int, default=4000, help="greedy answers to measure on, evenly spaced over the corpus")
    for name, info in NgramOptions.model_fields.items():
        if name != "calibration":
            ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=info.default, help=f"the ngram drafter's {name}")
    args = ap.parse_args(argv)
    options = NgramOptions(n_max=args.n_max, n_min=args.n_min, max_matches=args.max_matches, max_depth=args.max_depth)
    command = "jetspec fit-lookup " + " ".join(shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv))
    cal = fit_answers(load_corpus(args.corpus), args.rows, options, {"command": command, "corpus": str(args.corpus)})
    path = cal.save(args.out)
    print(f"{path}: {cal.source['rows']} greedy answers; acceptance rate of a continuation all occurrences agree on, by depth:")
    for n in range(cal.n_min, cal.n_max + 1):
        cells = cal.rates[n - 1]
        print(f"  match of {n}: " + " ".join(f"{cells[d][2]:.2f}" for d in range(DEPTHS)))
    return 0
