"""One way to do a thing: each building block has one home, below the components that use it,
and `jetspec/core` (the floor) imports nothing above it."""

import ast
import re
from pathlib import Path

import torch
from hypothesis import given, settings

from jetspec.core.tree import interval_ancestors, tree_mask, with_prefix
from jetspec.testing.strategies import draft_trees

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jetspec"
# GPU kernels apply the interval rule in registers and materialise no mask; the decoder's Triton
# kernels (invariant/) mirror RMSNorm and RoPE in registers, rounding where core.layer_math rounds
ELSEWHERE = ("jetspec/targets/decoder/invariant/", "jetspec/kernels/cute_", "jetspec/kernels/triton_")


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if not rel.startswith(ELSEWHERE):
            yield rel, path.read_text()


def definitions(name):
    return [rel for rel, text in sources() if re.search(rf"^def {name}\(", text, re.M)]


def test_the_tree_mask_is_materialised_in_core_tree_only():
    interval_rule = re.compile(r"<=\s*i\s*\)\s*&\s*\(\s*i\s*<")  # (j <= i) & (i < j + size[j])
    assert [rel for rel, text in sources() if interval_rule.search(text)] == ["jetspec/core/tree.py"]
    assert definitions("tree_mask") == ["jetspec/core/tree.py"]


def test_rmsnorm_and_rope_math_is_written_in_core_layer_math_only():
    """The statistic rsqrt(mean(x^2) + eps), the RoPE frequencies theta^(2i/D) and rotate_half are
    written once; the decoder, the draft heads and the kit's TinyDecoder call them."""
    math = {
        "rms statistic": re.compile(r"rsqrt\(\s*\w+\.pow\(2\)\.mean\("),
        "rope frequencies": re.compile(r"\*\*\s*\(?-?\s*(torch\.arange|i2)"),
        "rotate_half": re.compile(r"torch\.cat\(\[\s*-\s*\w+"),
    }
    for what, pattern in math.items():
        homes = [rel for rel, text in sources() if pattern.search(text)]
        assert homes == ["jetspec/core/layer_math.py"], (what, homes)
    for name in ("rms_norm", "apply_rope", "rope_cos_sin", "rope_frequencies"):
        assert definitions(name) == ["jetspec/core/layer_math.py"], name


def test_first_difference_is_defined_once():
    assert definitions("first_difference") == ["jetspec/core/results.py"]


@settings(max_examples=60, deadline=None)
@given(tree=draft_trees())
def test_the_tree_mask_is_the_interval_rule_after_the_prefix(tree):
    n, prefix = tree.size, 3
    mask = tree_mask(tree.subtree_sizes, prefix)  # [N, 3 + N]
    assert mask.shape == (n, prefix + n) and mask[:, :prefix].all()
    want = torch.tensor([[tree.is_ancestor(j, i) for j in range(n)] for i in range(n)])
    assert torch.equal(mask[:, prefix:], want) and torch.equal(interval_ancestors(tree.subtree_sizes), want)
    assert torch.equal(with_prefix(want, prefix), mask)


def test_core_imports_nothing_above_it():
    above = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                absolute = node.module or ""
                if node.level == 1:  # from .x: inside core
                    continue
                if node.level >= 2 or absolute.startswith("jetspec") and not absolute.startswith("jetspec.core"):
                    above.append(f"{path.name}: from {'.' * node.level}{absolute}")
            elif isinstance(node, ast.Import):
                above += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("jetspec") and not a.name.startswith("jetspec.core")]
    assert not above, above
