"""Every registered built-in of every kind passes the same conformance kit plugin authors run
(`jetspec.testing`): protocol checks, then the lossless property inside a pipeline."""

import pytest

import jetspec
from jetspec.testing import check_attention_backend, check_drafter, check_kv_cache, check_scorer, check_verifier

REG = jetspec.default_registry()
CHECKS = {
    "drafter": check_drafter,
    "scorer": check_scorer,
    "verifier": check_verifier,
    "kv_cache": check_kv_cache,
    "attention": check_attention_backend,
}
BUILTINS = [
    (kind, name)
    for kind in CHECKS
    for name, impl in sorted(REG.implementations[kind].items())
    if impl.plugin == "jetspec.builtins"
]


def test_every_kind_but_targets_has_a_check_and_builtins():
    assert set(CHECKS) == set(jetspec.core.hookspecs.KINDS) - {"target"}
    assert {kind for kind, _ in BUILTINS} == set(CHECKS)


@pytest.mark.parametrize("kind, name", BUILTINS, ids=[f"{k}:{n}" for k, n in BUILTINS])
def test_builtin_conforms(kind, name):
    if (kind, name) == ("attention", "cute"):
        from jetspec.kernels.cute_backend import unavailable

        if unavailable():
            pytest.skip(f"cute: {unavailable()}")
        pytest.skip("cute is bf16-only and the kit's lossless check runs an fp32 tiny decoder: its numerics are "
                    "tests/kernel_tests/test_cute_attention.py, its lossless check tests/targets/test_smollm2_gpu.py")
    # the kit's lossless check is equality with plain greedy: `sampling` is checked at its greedy
    # limit here (its T > 0 exactness is tests/test_sampling.py's statistical job)
    options = {"temperature": 0.0} if (kind, name) == ("verifier", "sampling") else None
    if (kind, name) in {("drafter", "jetspec"), ("drafter", "dflash"), ("drafter", "eagle")}:
        options = {"checkpoint": "random"}  # no head is trained for the kit's tiny targets
    extra = {"head_dims": (16, 32)} if (kind, name) == ("attention", "triton") else {}
    CHECKS[kind](name, options=options, registry=REG, examples=15, **extra)
