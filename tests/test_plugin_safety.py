"""Broken third-party plugins, discovered through real entry points: each is reported in ONE
line naming the plugin and the problem (also as a `jetspec plugins` stderr warning), and
everything else keeps working. JETSPEC_PLUGINS restricts which entry-point plugins load."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jetspec
from jetspec.core.registry import Registry
from jetspec.testing import tiny_decoder

REPO = Path(__file__).resolve().parents[1]
PLUGINS = {  # entry-point name -> (module source, the one line expected, or None: works)
    "good": ("[jetspec.Implementation('good-drafter', lambda o, t: NgramDrafter(), NgramOptions)]", None),
    "broken-import": ("raise RuntimeError('cannot import this\\nsecond line')",
                      "plugin 'broken-import' failed to load: RuntimeError: cannot import this"),
    "exits": ("raise SystemExit(3)", "plugin 'exits' failed to load: SystemExit: 3"),
    "exiting-hook": ("__import__('sys').exit('bye')", "plugin 'exiting-hook' raised in jetspec_drafters: SystemExit: bye"),
    "raising-hook": ("1 / 0", "plugin 'raising-hook' raised in jetspec_drafters: ZeroDivisionError: division by zero"),
    "duplicate": ("[jetspec.Implementation('ngram', lambda o, t: None, NgramOptions)]",
                  "plugin 'duplicate' registers drafter 'ngram', already provided by 'jetspec.builtins'; ignored"),
    "not-pydantic": ("[jetspec.Implementation('loose', lambda o, t: None, dict)]",
                     "plugin 'not-pydantic': drafter 'loose' options must be a pydantic model class"),
}
HEADER = "import jetspec\nfrom jetspec.drafters.ngram import NgramDrafter, NgramOptions\n"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder holding one installed distribution whose `jetspec` entry points are the plugins above."""
    for name, (body, _) in PLUGINS.items():
        module = name.replace("-", "_") + "_plugin"
        if body.startswith("raise"):
            src = HEADER + body + "\n"
        else:
            src = HEADER + f"\n@jetspec.hookimpl\ndef jetspec_drafters():\n    return {body}\n"
        (tmp_path / f"{module}.py").write_text(src)
    info = tmp_path / "jetspec_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jetspec-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[jetspec]\n" + "".join(f"{n} = {n.replace('-', '_')}_plugin\n" for n in PLUGINS)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("JETSPEC_PLUGINS", raising=False)
    yield tmp_path
    for n in PLUGINS:
        sys.modules.pop(n.replace("-", "_") + "_plugin", None)


def expected_problems(names=PLUGINS):
    return sorted(PLUGINS[n][1] for n in names if PLUGINS[n][1])


def test_each_broken_plugin_is_one_line_and_everything_else_works(site):
    reg = Registry.create(builtin_modules=jetspec.BUILTINS)
    assert sorted(reg.problems) == expected_problems()  # exactly these lines: one per broken plugin
    assert reg.get("drafter", "good-drafter").plugin == "good"
    assert reg.get("drafter", "ngram").plugin == "jetspec.builtins"
    assert "loose" not in reg.names("drafter")
    pipe = jetspec.builder(reg).target(tiny_decoder(0)).drafter("good-drafter").generation(budget=8, max_new_tokens=8).build()
    assert pipe.generate([1, 2, 1, 2]).tokens == pipe.generate_plain([1, 2, 1, 2]).tokens


@pytest.mark.parametrize("allow, loaded", [("good", ["good"]), ("good, duplicate", ["good", "duplicate"]), ("none", []), ("", list(PLUGINS))])
def test_JETSPEC_PLUGINS_restricts_which_entry_points_load(site, monkeypatch, allow, loaded):
    monkeypatch.setenv("JETSPEC_PLUGINS", allow)
    reg = Registry.create(builtin_modules=jetspec.BUILTINS)
    assert sorted(reg.problems) == expected_problems(loaded)
    assert ("good-drafter" in reg.names("drafter")) == ("good" in loaded)


def test_jetspec_plugins_warns_once_per_broken_plugin_on_stderr(site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("JETSPEC_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "jetspec.cli", "plugins"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    assert sorted(proc.stderr.splitlines()) == sorted(f"warning: {p}" for p in expected_problems())
    assert "  good-drafter " in proc.stdout and "  ngram " in proc.stdout
    restricted = subprocess.run([sys.executable, "-m", "jetspec.cli", "plugins"], capture_output=True, text=True,
                                env={**env, "JETSPEC_PLUGINS": "good"})
    assert restricted.stderr == "" and "  good-drafter " in restricted.stdout
