"""bench/lookup_cost.py: the prompt lookup's host cost per round on corpus answers, one row per run."""

import json

import pytest

from bench import lookup_cost


def test_a_run_writes_a_row_of_its_cost_per_call(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    lookup_cost.main(["--rows", "2", "--repeats", "1", "--calibration", "none", "--label", "t", "--out", str(out)])
    row = json.loads(out.read_text())
    assert row["kind"] == "lookup_cost" and row["label"] == "t" and row["rows"] == 2 and row["calibration"] == "none"
    assert row["dtype"] == "float64" and {"command", "machine", "date"} <= row.keys()
    assert row["calls"] > 10 and row["us_per_call"] > 0 and row["nodes_per_call"] > 0
    assert "us per propose_flat" in capsys.readouterr().out


def test_rows_below_one_is_a_one_line_error():
    with pytest.raises(SystemExit, match="--rows and --repeats must be at least 1"):
        lookup_cost.main(["--rows", "0"])
