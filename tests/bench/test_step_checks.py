"""`python -m bench.step_checks`: the grown step's two host passes timed on inputs they accept —
its lookup tries pack without a fault, its tree block reads back as valid trees — one row per size."""

import json
import random

from bench.step_checks import VOCAB, random_tries, main, tree_block
from jetspec.core.batch_grow import _packed, host_trees
from jetspec.core.tree import DraftTree


def test_its_inputs_are_a_steps_well_formed_tries_and_trees():
    rng = random.Random(0)
    tries = random_tries(8, rng)
    assert not isinstance(_packed(tries, VOCAB), dict) and any(t is None for t in random_tries(20, rng))
    block, roots, prefixes = tree_block(8, 17, rng)
    trees = host_trees(block, 17, roots, prefixes, VOCAB, "s")
    assert len(trees) == 8 and all(isinstance(t, DraftTree) for t in trees)
    for t in trees:
        t.validate()


def test_each_size_gets_a_row_with_its_command_machine_and_date(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    main(["--sizes", "2,4", "--calls", "3", "--repeats", "1", "--label", "x", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sequences"] for r in rows] == [2, 4] and all(r["packed_us"] > 0 and r["host_trees_us"] > 0 for r in rows)
    assert rows[0]["command"].startswith("python -m bench.step_checks --sizes 2,4") and rows[0]["machine"] and rows[0]["date"].endswith("UTC")
    assert rows[0]["dtype"]
    assert "_packed" in capsys.readouterr().out
