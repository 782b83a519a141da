"""One results file, several writers: every appended row survives concurrent summary rewrites, and
a line torn by a kill never swallows the row appended after it."""

import json
import subprocess
import sys
import time

from jetspec.bench.rows import append_row, read_rows, replace_summaries

WRITER = r'''
import sys, time
from pathlib import Path
from jetspec.bench.rows import append_row, replace_summaries

path, name, n, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
time.sleep(max(0.0, start - time.time()))  # both writers begin together, whatever their import took
for i in range(n):
    append_row(path, {"kind": "spec", "writer": name, "i": i})
    if i % 2 == 0:  # a shard that finishes often: rewrites the file with new summaries
        replace_summaries(path, [{"kind": "summary", "writer": name, "after": i}])
'''


def test_two_writers_of_one_results_file_lose_no_row(tmp_path):
    path = tmp_path / "results.jsonl"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start = str(time.time() + 8)
    writers = [subprocess.Popen([sys.executable, str(script), str(path), name, "150", start]) for name in ("a", "b")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole
    for name in ("a", "b"):
        assert sorted(r["i"] for r in rows if r["kind"] == "spec" and r["writer"] == name) == list(range(150))
    assert sum(r["kind"] == "summary" for r in rows) == 1  # only the last rewrite's summary remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl", "writer.py"]  # no temporary left


def test_a_torn_last_line_is_cut_off_before_the_next_append(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"kind": "plain", "i": 0})
    with path.open("a") as f:
        f.write('{"kind": "spec", "i": 1, "tok')  # a kill mid-write
    append_row(path, {"kind": "run", "run": "r2"})
    assert read_rows(path) == [{"kind": "plain", "i": 0}, {"kind": "run", "run": "r2"}]
    assert path.read_text().endswith('"r2"}\n')


def test_a_file_holding_only_a_torn_line_starts_again(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"kind": "sp')
    append_row(path, {"kind": "run"})
    assert path.read_text() == '{"kind": "run"}\n'
