"""`python -m bench.head_tree_probe`: τ of the head's trees on held-out answers for each scoring and budget, one row
each with the command, machine and date; the calibration is fitted on half the held-out answers and the other
half is replayed."""

import json

import torch

from bench.head_tree_probe import main
from head_fixtures import HeadTarget, tiny_corpus
from jetspec.drafters.head import HeadOptions, jetspec_drafter, save_head


def test_one_row_per_scoring_and_budget(tmp_path):
    prompts = [f"Tom has {i} apples and {i} pears. How many?" for i in range(20)]
    folder, model, _, corpus = tiny_corpus(tmp_path, prompts, rows=40, chunk=40)
    head_dir = tmp_path / "head"
    save_head(jetspec_drafter(HeadOptions(checkpoint="random", block_size=4), HeadTarget(model)).head, head_dir, dtype=torch.float32)
    out = tmp_path / "rows.jsonl"
    assert main(["--head", str(head_dir), "--corpus", str(corpus), "--target", str(folder), "--rows", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r["budget"]) for r in rows] == [(v, b) for v in ("raw-k8", "raw-k16", "calibrated-k16") for b in (16, 64, 256)]
    for r in rows:
        assert {"date", "machine", "command", "device", "torch"} <= set(r) and r["fit_rows"] == r["replayed_rows"] == 2
        assert 1.0 <= r["tau"] <= 4.0 and r["rounds"] > 0  # at most the 3 drafted depths + 1
