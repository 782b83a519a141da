"""The model cache under concurrency and kills: two first runs at once prepare the default model
once and both get it; a run killed mid-conversion leaves staging folders that the next run removes;
`convert` onto a file or a non-empty folder is one line. The download and the dequantization are
replaced by a tiny fake (`FAKE`), so the locking and renaming under test are the real ones."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetspec.core.files import locked

FAKE = r'''
import os, sys, time
from pathlib import Path
import jetspec.targets.gguf_import as g
import jetspec.targets.default_model as d

class Tokenizer:
    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")

def save_fresh_copy(model, folder, dtype):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    print("STAGING", flush=True)
    time.sleep(float(sys.argv[2]))
    (folder / "config.json").write_text('{"by": %d}' % os.getpid())

def find_gguf(tmp, wheel_dirs, say):
    print("FETCHING", flush=True)
    (tmp / "model.gguf").write_bytes(b"GGUF")
    return tmp / "model.gguf"

g.check_gguf = lambda path: "llama"
g.read_with_transformers = lambda path: (None, Tokenizer())
g.save_fresh_copy = save_fresh_copy
d.find_gguf = find_gguf
d.check_sha256 = lambda path: None
print(d.default_model_path(cache_dir=sys.argv[1], progress=False), flush=True)
'''


def prepare(tmp_path: Path, seconds: float) -> subprocess.Popen:
    script = tmp_path / "fake_prepare.py"
    script.write_text(FAKE)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.glob(".*"))


def test_two_first_runs_at_once_prepare_the_model_once_and_both_get_it(tmp_path):
    runs = [prepare(tmp_path, 1.0) for _ in range(2)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [err for _, err in outs]
    folder = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert [out.splitlines()[-1] for out, _ in outs] == [str(folder)] * 2
    assert sum(out.count("FETCHING") for out, _ in outs) == 1  # the second waited, then found it ready
    assert (folder / "config.json").is_file() and leftovers(folder.parent) == []


def test_a_killed_preparation_is_cleaned_up_by_the_next_run(tmp_path):
    killed = prepare(tmp_path, 60.0)
    assert killed.stdout.readline().strip() == "FETCHING" and killed.stdout.readline().strip() == "STAGING"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    models = tmp_path / "cache" / "models"
    left = leftovers(models)
    assert any(n.startswith(".download-") for n in left) and any(".partial-" in n for n in left), left
    again = prepare(tmp_path, 0.0)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert leftovers(models) == [] and (models / "SmolLM2-135M-Instruct" / "config.json").is_file()


def test_convert_onto_a_file_or_a_full_folder_is_one_line(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    for out, expected in [("file", "it is a file, not a folder"), ("full", "the folder exists and is not empty")]:
        proc = subprocess.run([sys.executable, "-m", "jetspec.cli", "convert", str(gguf), str(tmp_path / out)],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.strip().endswith(expected), proc.stderr


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_lock_is_exclusive_across_processes_and_released_by_a_kill(tmp_path, what):
    lock = tmp_path / "locked" if what == "folder" else tmp_path / "x.lock"
    if what == "folder":
        lock.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"from jetspec.core.files import locked\nimport time\n"
                               f"with locked({str(lock)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    waited = []
    start = time.monotonic()
    holder_killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1.0); os.kill({holder.pid}, 9)"])
    with locked(lock, waiting=lambda: waited.append(time.monotonic())):
        took = time.monotonic() - start
    holder_killer.wait(timeout=30)
    holder.wait(timeout=30)
    assert waited and took >= 0.9  # it waited for the holder, and got the lock when the holder died
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]  # a folder's lock leaves no file
