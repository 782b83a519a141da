"""The example plugin package (plugins/jetspec-suffix-drafter), installed the way a user installs
it, is discovered through its entry point, listed by `jetspec plugins`, configurable from a TOML
file, and lossless (the conformance kit); its own tests pass against the installed copy.

It is installed with pip into a temporary target folder put on sys.path (offline, no build
isolation, nothing left in the environment or the source tree afterwards)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jetspec
from jetspec.core.errors import ConfigError
from jetspec.core.registry import Registry
from jetspec.testing import check_drafter, tiny_decoder

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "plugins" / "jetspec-suffix-drafter"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install a copy of the package (so no build/ or egg-info lands in the repo)."""
    tmp = tmp_path_factory.mktemp("suffix-plugin")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("jetspec_suffix_drafter")]:
        del sys.modules[name]
    jetspec.default_registry(refresh=True)  # forget the plugin for the tests that follow


def env(site):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_it_is_discovered_through_the_jetspec_entry_point_group(site):
    reg = Registry.create(builtin_modules=jetspec.BUILTINS)
    assert reg.problems == []
    assert "suffix-drafter" in reg.plugins
    impl = reg.get("drafter", "suffix")
    assert impl.plugin == "suffix-drafter" and "suffix automaton" in impl.summary


def test_jetspec_plugins_lists_it(site):
    proc = subprocess.run([sys.executable, "-m", "jetspec.cli", "plugins"], capture_output=True, text=True, env=env(site))
    assert proc.returncode == 0 and proc.stderr == ""
    drafters = proc.stdout.split("drafter:")[1].split("scorer:")[0]
    assert "  suffix " in drafters and "[suffix-drafter]" in drafters


def test_jetspec_plugins_restricted_to_none_hides_it(site):
    proc = subprocess.run([sys.executable, "-m", "jetspec.cli", "plugins"], capture_output=True, text=True,
                          env={**env(site), "JETSPEC_PLUGINS": "none"})
    assert proc.returncode == 0 and "[suffix-drafter]" not in proc.stdout


def test_it_is_configured_from_a_toml_file(site, tmp_path):
    reg = Registry.create(builtin_modules=jetspec.BUILTINS)
    run = tmp_path / "run.toml"
    run.write_text('drafter = { name = "suffix", max_matches = 4, length_weight = 1.5 }\n'
                   '[generation]\nbudget = 12\nmax_new_tokens = 24\n')
    pipe = jetspec.from_config(run, target=tiny_decoder(1), registry=reg)
    assert type(pipe.drafter).__name__ == "SuffixDrafter"
    assert (pipe.drafter.options.max_matches, pipe.drafter.options.length_weight) == (4, 1.5)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    assert pipe.generate(prompt).tokens == pipe.generate_plain(prompt).tokens

    run.write_text('drafter = { name = "suffix", max_match = 4 }\n')
    with pytest.raises(ConfigError, match=r"^drafter 'suffix': max_match: unknown field \(options: min_match, max_matches"):
        jetspec.from_config(run, target=tiny_decoder(1), registry=reg)


def test_it_is_lossless(site):
    check_drafter("suffix", registry=Registry.create(builtin_modules=jetspec.BUILTINS), examples=10)


def test_its_own_test_suite_passes_against_the_installed_copy(site):
    # its conformance test repeats test_it_is_lossless above with more examples: skipped here for time
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not conforms",
                           str(PACKAGE / "tests")],
                          capture_output=True, text=True, env=env(site), cwd=str(site.parent))
    assert proc.returncode == 0, proc.stdout[-2000:]
