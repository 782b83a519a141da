"""The README documents every environment variable the code reads (one table, one row each)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
TABLE = README.split("## Environment variables", 1)[1].split("\n## ", 1)[0]


def variables_read() -> set[str]:
    found = set()
    for folder in ("jetspec", "tests", "bench", "plugins"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".sh"}:
                found |= set(re.findall(r"\bJETSPEC_[A-Z]+(?:_[A-Z]+)*\b", path.read_text(errors="replace")))
    return found


def test_every_JETSPEC_variable_has_a_row():
    rows = set(re.findall(r"^\| `(\w+)` \|", TABLE, flags=re.M))
    read = variables_read()
    assert {"JETSPEC_CACHE", "JETSPEC_PROMPTS", "JETSPEC_PLUGINS"} <= read  # the scan finds them
    assert not read - rows, f"undocumented in README's environment variables table: {sorted(read - rows)}"
    assert not {r for r in rows if r.startswith("JETSPEC_")} - read, "documented but read nowhere"
