"""`jetspec.testing`: the conformance kit a plugin author runs from their own test suite.

    from jetspec.testing import check_drafter

    def test_my_drafter_conforms():
        check_drafter("my-drafter", options={"depth": 4}, examples=20)

Each `check_*` runs protocol checks (options model, capabilities, the Protocol, the kind's own
contract on random inputs) and then the LOSSLESS property: inside a pipeline of reference parts
on tiny random targets, speculative output equals plain greedy output token for token (a drafter
also at realistic sizes, under greedy and seeded sampling: `at_scale.py`; every kind also in
batched use, several sequences per verify forward: `batched.py`). A failure
raises `ConformanceError` naming the component, the check, the example and the first differing
position. JetSpec's own built-ins pass through the same kit (tests/test_conformance.py).

Also here: the tiny targets (`tiny_target`, `TinyDecoder`), the `oracle` test drafter, random
proposal / tree strategies and `plain_greedy`, for authors who write their own properties.
Needs `hypothesis` (`pip install 'jetspec[testing]'`).
"""

from .batched import PromptOracle, assemble_batched
from .conformance import check_attention_backend, check_drafter, check_kv_cache, check_scorer, check_verifier
from .kv_semantics import ReferenceKV
from .lossless import assemble, plain_greedy
from .models import EOS, FAMILIES, TinyDecoder, any_tiny_target, tiny_decoder, tiny_decoder_target, tiny_hf_model, tiny_target
from .oracle import OracleDrafter, OracleOptions
from .strategies import depth_marginals, draft_trees, proposals, token_tries, trees_and_choices
from .subject import ConformanceError

__all__ = [
    "ConformanceError",
    "EOS",
    "FAMILIES",
    "OracleDrafter",
    "OracleOptions",
    "PromptOracle",
    "ReferenceKV",
    "TinyDecoder",
    "any_tiny_target",
    "assemble",
    "assemble_batched",
    "check_attention_backend",
    "check_drafter",
    "check_kv_cache",
    "check_scorer",
    "check_verifier",
    "depth_marginals",
    "draft_trees",
    "plain_greedy",
    "proposals",
    "tiny_decoder",
    "tiny_decoder_target",
    "tiny_hf_model",
    "tiny_target",
    "token_tries",
    "trees_and_choices",
]
