"""bench/device/h200.sh fails when a step fails: every python command it runs is followed by a
check of its own exit status (a pipe into `tail` or `tee` would otherwise hide it), and a sharded
run waits for each shard's status."""

import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "device" / "h200.sh"


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def test_every_python_command_of_the_device_script_has_its_status_checked():
    lines = logical_lines(SCRIPT.read_text())
    unchecked = []
    for i, line in enumerate(lines):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if not re.search(r"\bpython3 (-m |bench/|-c )", code) or "pip install" in code:
            continue
        if code.rstrip().endswith("&"):  # a background shard: `wait $pid` checks it
            continue
        checked = "|| exit" in code or "|| failed" in code or "|| bad" in code or "|| return" in code or "PIPESTATUS" in code
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not (checked or "PIPESTATUS" in following or re.match(r"\s*\[ \$\? ", following)):
            unchecked.append(f"line {i + 1}: {code.strip()[:90]}")
    assert not unchecked, "exit status dropped:\n" + "\n".join(unchecked)


def test_a_sharded_run_fails_when_a_shard_fails():
    text = SCRIPT.read_text()
    assert re.search(r'for p in "\$\{pids\[@\]\}"; do wait \$p \|\| bad=1; done', text)
    assert text.count("|| failed=\"$failed $step\" ;;") >= 2  # tau and exact-bench use sharded's status
