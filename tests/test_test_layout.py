"""The test folders must not shadow an installed package: conftest.py (and pytest's prepend import
mode) put tests/ first on sys.path, so a test package named like a real one (transformers imports
`kernels`, the Hugging Face kernel hub, when it is installed) would be imported in its place."""

import importlib.metadata
from pathlib import Path


def test_no_test_package_shares_a_name_with_an_installed_module():
    installed = importlib.metadata.packages_distributions()  # top-level module -> distributions
    packages = sorted(p.parent.name for p in Path(__file__).parent.glob("*/__init__.py"))
    assert packages, "the test folders are packages (tests/*/__init__.py)"
    shadowing = {name: installed[name] for name in packages if name in installed}
    assert not shadowing, f"test packages named like installed modules: {shadowing}"
