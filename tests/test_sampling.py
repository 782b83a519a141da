"""Sampling at temperature > 0 is lossless IN DISTRIBUTION: for any drafter — right, wrong,
random, wide or deep — the first k generated tokens of speculative sampling follow exactly the
law of plain sampling from the target, P(x_1..x_k) = prod_t p(x_t | prompt, x_<t), where p is the
target's warped (temperature, top-k, top-p) distribution.

The exact law is COMPUTED by enumeration over a tiny vocabulary (8 or 16 tokens, k = 2..3) and
each test compares n observed outcomes with it by Pearson's chi-square (support/stats.py),
rejecting at p < ALPHA = 1e-4.

False failures: seeds are fixed, so a run of this file is deterministic. Over fresh base seeds
(JETSPEC_STAT_SEED=s) each of the CORRECT-sampler checks below fails with probability ~ALPHA
(cells are pooled to >= 5 expected counts, where the chi-square approximation is good), so with
the 12 such checks here a fresh seed fails falsely with probability ~1.2e-3.
Power: the same statistics must reject deliberately BIASED verifiers (`first-child`, and `leaky`
which follows the first child with probability 5% only) — proof that the tests can fail.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.errors import ConfigError, IncompatibleError
from jetspec.core.interfaces import DecodeState
from jetspec.core.registry import Registry
from jetspec.core.tree import DraftTree
from jetspec.scorers.best_first import BestFirstScorer
from jetspec.verifiers.greedy import GreedyVerifier
from jetspec.verifiers.sampling import SamplingOptions, SamplingVerifier, inverse_cdf, warp_probs
from support import oracle, sampling_plugins
from support.models import EOS, FAMILIES, tiny_hf_model, tiny_target
from support.sampling_plugins import BiasedOptions, LeakyVerifier, RandomProposal, RandomTreeOptions
from support.stats import ALPHA, BASE_SEED, fit
from support.table import TableTarget, exact_law

REG = Registry.create(
    builtin_modules=jetspec.BUILTINS,
    extra_plugins=[("oracle", oracle), ("sampling-test", sampling_plugins)],
    entry_points=False,
)
assert not REG.problems, REG.problems
V = 8
TABLE = TableTarget(vocab=V, seed=BASE_SEED)
PROMPT = (1, 2, 3)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine torch's
    thread pool turns a 17x8 softmax into ~20 ms. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def seeds(salt: int, n: int) -> range:
    """n fixed seeds, distinct per test (salt) and per base seed."""
    start = (BASE_SEED * 1000 + salt) * 1_000_000
    return range(start, start + n)


def warped(target, temperature=1.0, top_k=None, top_p=1.0):
    return lambda ctx: warp_probs(target.logits(ctx)[None], temperature, top_k, top_p)[0]


# ---------------------------------------------------------------------------- warping
def test_temperature_top_k_and_top_p_keep_the_documented_sets():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -1.0]])
    p = torch.softmax(logits / 0.5, -1)
    assert torch.allclose(warp_probs(logits, 0.5), p)
    top2 = warp_probs(logits, 1.0, top_k=2)
    assert torch.allclose(top2, torch.tensor([[1, torch.e**-1, 0, 0, 0]]) / (1 + torch.e**-1))
    # tie at the k-th value: both tied tokens stay
    assert (warp_probs(logits, 1.0, top_k=4) > 0).tolist() == [[True] * 5]
    full = torch.softmax(logits, -1)[0]  # ~[.64, .24, .09, .03, .03]
    assert (warp_probs(logits, 1.0, top_p=0.6) > 0).tolist() == [[True, False, False, False, False]]
    assert (warp_probs(logits, 1.0, top_p=float(full[0]) + 1e-3) > 0).tolist() == [[True, True, False, False, False]]
    assert (warp_probs(logits, 1.0, top_p=1.0) > 0).all()


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12))
def test_the_zero_temperature_limit_is_the_argmax(values):
    logits = torch.tensor([values])
    gap = (logits.max() - logits.topk(2).values[0, 1]).item()
    if gap > 1e-3:  # a near-tie has no sharp limit at this temperature
        assert warp_probs(logits, 1e-5).argmax().item() == logits.argmax().item()
        assert warp_probs(logits, 1e-5).max().item() == pytest.approx(1.0)


def test_inverse_cdf_gives_each_token_its_probability_and_never_a_zero_one():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0])
    m = 4096
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m  # an even grid over [0, 1)
    draws = inverse_cdf(probs.expand(m, -1), u)
    assert torch.bincount(draws, minlength=6).tolist() == [0, 2048, 0, 1024, 1024, 0]
    assert inverse_cdf(probs[None], torch.tensor([0.0])).item() == 1
    assert inverse_cdf(probs[None], torch.tensor([1 - 2**-53], dtype=torch.float64)).item() == 4


def test_options_are_validated():
    with pytest.raises(ConfigError, match="temperature"):
        jetspec.builder(REG).target(TABLE).verifier("sampling", temperature=-1).build()
    with pytest.raises(ConfigError, match="top_p"):
        jetspec.builder(REG).target(TABLE).verifier("sampling", top_p=0).build()
    with pytest.raises(ConfigError, match="top_k"):
        jetspec.builder(REG).target(TABLE).verifier("sampling", top_k=0).build()


# ---------------------------------------------------------------------------- one round, fixed trees
def node_logits(tree: DraftTree, prompt=PROMPT) -> torch.Tensor:
    """[N, V] the target's logits at each node: after prompt + the node's path."""
    toks = tree.tokens.tolist()
    return torch.stack([TABLE.logits(prompt + tuple(toks[j] for j in tree.path_to(i)[1:])) for i in range(tree.size)])


def round_law(tree: DraftTree, p, prompt=PROMPT) -> dict[tuple[int, ...], float]:
    """P(a round commits s): s = the tokens of a tree path root -> v, then a token x that is not a
    child of v, with probability prod_j p(s_j | prompt, s_<j)."""
    toks = tree.tokens.tolist()
    law = {}
    for v in range(tree.size):
        path = tuple(toks[j] for j in tree.path_to(v)[1:])
        p_path = 1.0
        for j in range(len(path)):
            p_path *= float(p(prompt + path[:j])[path[j]])
        kids = {toks[c] for c in tree.children(v)}
        for x, px in enumerate(p(prompt + path).tolist()):
            if x not in kids and px > 0:
                law[path + (x,)] = p_path * px
    return law


def draw_rounds(verifier, tree: DraftTree, n: int, salt: int) -> list[tuple[int, ...]]:
    state = DecodeState(tokens=list(PROMPT), prompt_len=len(PROMPT))
    logits = node_logits(tree)
    out = []
    for s in seeds(salt, n):
        verifier.reset(state, seed=s)
        out.append(tuple(verifier.accept(tree, logits, state).new_tokens(tree)))
    return out


def mode_chain(depth: int) -> DraftTree:
    """Deliberately right: the target's most likely continuation."""
    chain = []
    for _ in range(depth):
        chain.append(int(TABLE.logits(PROMPT + tuple(chain)).argmax()))
    return DraftTree.chain([PROMPT[-1], *chain])


def unlikely_tree() -> DraftTree:
    """Deliberately wrong: at each node the 3 LEAST likely tokens, 2 levels deep."""
    tokens, parents = [PROMPT[-1]], [-1]
    for a in TABLE.logits(PROMPT).argsort()[:3].tolist():
        tokens.append(a), parents.append(0)
        here = len(tokens) - 1
        for b in TABLE.logits(PROMPT + (a,)).argsort()[:3].tolist():
            tokens.append(b), parents.append(here)
    return DraftTree.from_parents(tokens, parents)


def random_tree(budget: int, width: int, depth: int, salt: int) -> DraftTree:
    return BestFirstScorer().build(RandomProposal(RandomTreeOptions(vocab_size=V, width=width, depth=depth), salt), PROMPT[-1], budget)


def full_tree() -> DraftTree:
    """All V tokens at depth 1 and all V x V at depth 2: every round commits 3 tokens."""
    tokens, parents = [PROMPT[-1]], [-1]
    for a in range(V):
        tokens.append(a), parents.append(0)
        here = len(tokens) - 1
        for b in range(V):
            tokens.append(b), parents.append(here)
    return DraftTree.from_parents(tokens, parents)


ROUNDS = 20_000  # per fixed tree: enough that a 5% leak toward the first child is rejected
ROUND_CASES = {
    "root only (plain)": (lambda: DraftTree.root_only(PROMPT[-1]), {}),
    "mode chain, 6 deep": (lambda: mode_chain(6), {"temperature": 0.8}),
    "least likely tokens": (unlikely_tree, {}),
    "random, 24 nodes": (lambda: random_tree(24, 3, 5, 11), {"temperature": 0.7, "top_k": 5, "top_p": 0.9}),
    "full V x V, 72 nodes": (full_tree, {"temperature": 1.3}),
}


@pytest.mark.parametrize("case", list(ROUND_CASES))
def test_one_round_commits_each_sequence_with_its_target_probability(case, record_property):
    make_tree, warp = ROUND_CASES[case]
    tree = make_tree()
    verifier = SamplingVerifier(SamplingOptions(**warp))
    samples = draw_rounds(verifier, tree, ROUNDS, salt=list(ROUND_CASES).index(case))
    result = fit(samples, round_law(tree, warped(TABLE, **warp)))
    record_property("fit", str(result))
    assert result.p_value >= ALPHA, f"{case}: {result}"


@pytest.mark.parametrize("eps", [1.0, 0.05])
def test_a_verifier_biased_toward_the_first_child_is_rejected(eps, record_property):
    """Power: following the first child with probability eps (then a correct walk) shifts the
    law by a few percent at eps = 0.05; the same test must reject it."""
    tree = mode_chain(6)
    samples = draw_rounds(LeakyVerifier(BiasedOptions(eps=eps, temperature=0.8)), tree, ROUNDS, salt=50)
    result = fit(samples, round_law(tree, warped(TABLE, 0.8)))
    record_property("fit", str(result))
    assert result.p_value < ALPHA, f"eps={eps}: {result}"


# ---------------------------------------------------------------------------- whole pipeline
K = 3  # the joint law of the first K generated tokens: V^K = 512 outcomes


def pipeline_samples(target, n: int, salt: int, drafter=None, verifier="sampling", scorer="best-first",
                     budget=16, k=K, **verifier_options) -> list[tuple[int, ...]]:
    """The first k tokens of n runs, one seed s per run. A seeded test drafter gets seed
    s + 2**40: its own stream, never one a verifier of this suite uses (a drafter that saw the
    verifier's uniforms could legitimately bias the output)."""
    out = []
    for s in seeds(salt, n):
        b = jetspec.builder(REG).target(target).verifier(verifier, seed=s, **verifier_options).scorer(scorer)
        if drafter:
            name, options = drafter
            options = options if name == "ngram" else {**options, "seed": s + 2**40}
            b = b.drafter(name, **options).generation(budget=budget, max_new_tokens=k)
        else:
            b = b.generation(budget=0, max_new_tokens=k)
        out.append(tuple(b.build().generate(list(PROMPT)).tokens))
    return out


WARP = {"temperature": 0.7, "top_k": 5, "top_p": 0.9}
PIPELINE_CASES = {
    "plain sampling": (None, "best-first", 0, {}),
    "random tree, wide (8 per node)": (("random-tree", {"width": 8, "depth": 2}), "best-first", 48, {}),
    "random tree, deep chain": (("random-tree", {"width": 1, "depth": 10}), "chain", 10, WARP),
    "oracle: 4 target samples": (("target-oracle", {"samples": 4, "depth": 3}), "best-first", 16, {}),
    "oracle: the mode, warped": (("target-oracle", {"mode": "mode", "depth": 4}), "chain", 4, WARP),
    "ngram on the history": (("ngram", {"n_min": 1}), "best-first", 8, {"temperature": 1.5}),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_first_k_tokens_follow_the_exact_target_law(case, record_property):
    drafter, scorer, budget, warp = PIPELINE_CASES[case]
    samples = pipeline_samples(TABLE, 2000, 100 + list(PIPELINE_CASES).index(case), drafter, scorer=scorer, budget=budget, **warp)
    result = fit(samples, exact_law(warped(TABLE, **warp), PROMPT, K, V))
    record_property("fit", str(result))
    assert result.p_value >= ALPHA, f"{case}: {result}"


def test_the_pipeline_test_rejects_a_biased_verifier(record_property):
    samples = pipeline_samples(TABLE, 2000, 200, ("target-oracle", {}), verifier="first-child")
    result = fit(samples, exact_law(warped(TABLE), PROMPT, K, V))
    record_property("fit", str(result))
    assert result.p_value < ALPHA, str(result)


def test_a_real_tiny_model_samples_its_own_law(record_property):
    """A `transformers` model (vocab 16, k = 2): tree-masked forwards, KV copies and all."""
    target = hf_target_16()
    with torch.no_grad():
        first = target.model(torch.tensor([PROMPT])).logits[0, -1].float()  # [16]
        second = target.model(torch.tensor([PROMPT + (x,) for x in range(16)])).logits[:, -1].float()  # [16, 16]
    table = {PROMPT: first, **{PROMPT + (x,): second[x] for x in range(16)}}
    law = exact_law(lambda c: warp_probs(table[c][None], 1.0)[0], PROMPT, 2, 16, eos=EOS)  # EOS stops a run
    drafter = ("random-tree", {"vocab_size": 16, "width": 6, "depth": 2})
    samples, biased = (
        pipeline_samples(target, 600, salt, drafter, verifier=verifier, budget=16, k=2)
        for salt, verifier in [(300, "sampling"), (301, "first-child")]
    )
    correct, wrong = fit(samples, law), fit(biased, law)
    record_property("fit", f"sampling: {correct} | first-child: {wrong}")
    assert correct.p_value >= ALPHA, str(correct)
    assert wrong.p_value < ALPHA, str(wrong)


def hf_target_16():
    from jetspec.targets.transformers_adapter import TransformersTarget

    return TransformersTarget(tiny_hf_model("llama", 0, vocab=16), name="tiny-llama-v16")


# ---------------------------------------------------------------------------- reproducibility
def test_the_same_seed_gives_the_same_output_and_another_seed_another():
    def run(seed, speculative=True):
        pipe = jetspec.builder(REG).target(tiny_target("llama", 0)).drafter("ngram").verifier("sampling", seed=seed)
        return pipe.generation(budget=8, max_new_tokens=24).build().generate([5, 6, 7, 5, 6], speculative=speculative).tokens

    assert run(1) == run(1) and run(1, False) == run(1, False)
    assert run(1) != run(2)
    pipe = jetspec.builder(REG).target(tiny_target("llama", 0)).verifier("sampling").generation(budget=0, max_new_tokens=24).build()
    # seed None: fresh entropy per generate. Two draws can agree by chance (both stop at once), four
    # all alike only if the entropy is not fresh
    assert len({tuple(pipe.generate([5, 6]).tokens) for _ in range(4)}) > 1


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**31),
    drafter=st.sampled_from(["random-tree", "target-oracle", "ngram"]),
    width=st.integers(1, V),
    budget=st.integers(1, 64),
    scorer=st.sampled_from(["best-first", "chain"]),
    warp=st.sampled_from([{}, WARP, {"temperature": 2.0, "top_k": 2}]),
    prompt=st.lists(st.integers(0, V - 1), min_size=1, max_size=6),
)
def test_speculative_and_plain_draw_the_same_tokens_when_logits_are_bit_identical(seed, drafter, width, budget, scorer, warp, prompt):
    """The verifier's coupling (module doc of jetspec.verifiers.sampling): token t is the inverse
    CDF of u_t in both runs. The lookup-table target's logits do not depend on the tree, so the
    two runs must agree token for token; a real model's differ by rounding (see the doc)."""
    options = {"random-tree": {"width": width, "depth": 5, "seed": seed + 1}, "target-oracle": {"seed": seed + 1}, "ngram": {}}[drafter]
    pipe = (jetspec.builder(REG).target(TABLE).drafter(drafter, **options).scorer(scorer)
            .verifier("sampling", seed=seed, **warp).generation(budget=budget, max_new_tokens=20).build())
    assert pipe.generate(prompt).tokens == pipe.generate_plain(prompt).tokens


# ---------------------------------------------------------------------------- greedy limit
@settings(max_examples=25)
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 3),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=20),
    budget=st.integers(0, 32),
    drafter=st.sampled_from(["ngram", "oracle"]),
)
def test_temperature_zero_is_the_greedy_verifier(family, seed, prompt, budget, drafter):
    def run(verifier, **options):
        b = jetspec.builder(REG).target(tiny_target(family, seed)).drafter(drafter).verifier(verifier, **options)
        return b.generation(budget=budget, max_new_tokens=16).build().generate(prompt).tokens

    assert run("sampling", temperature=0, top_k=3, seed=seed) == run("greedy")


def test_greedy_and_sampling_at_zero_agree_on_a_hand_made_tree():
    tree = DraftTree.from_parents([0, 5, 6, 7], [-1, 0, 0, 1])
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    state = DecodeState(tokens=[0], prompt_len=1)
    zero = SamplingVerifier(SamplingOptions(temperature=0)).accept(tree, logits, state)
    assert zero == GreedyVerifier().accept(tree, logits, state)


# ---------------------------------------------------------------------------- capabilities
def test_the_build_refuses_a_verifier_whose_drafter_lacks_a_capability_in_one_sentence():
    with pytest.raises(IncompatibleError) as e:
        jetspec.builder(REG).target(TABLE).drafter("ngram").verifier("needs-draft-probs").build()
    assert str(e.value) == (
        "verifier 'needs-draft-probs' needs a drafter that provides 'draft_probs', but drafter 'ngram' provides nothing"
    )


def test_the_sampling_verifier_declares_sampling_and_needs_nothing_of_the_drafter():
    impl = REG.get("verifier", "sampling")
    assert impl.provides == {"sampling"} and not impl.requires
    assert "sampling" not in REG.get("verifier", "greedy").provides


# ---------------------------------------------------------------------------- command line
def cli_config(*flags, config=None):
    from jetspec.cli import parser
    from jetspec.cli_generate import _pipeline_config

    args = parser().parse_args(["generate", "hi", "--drafter", "ngram", *flags])
    if config is not None:
        args.config = str(config)
    return _pipeline_config(args).verifier


def test_cli_temperature_selects_the_sampling_verifier_with_its_options():
    v = cli_config("--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "7")
    assert v.name == "sampling" and v.options == {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 7}
    assert cli_config("--temperature", "0").name == cli_config().name == "greedy"


def test_cli_flags_tune_a_configured_sampling_verifier(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[verifier]\nname = "sampling"\ntemperature = 0.5\ntop_k = 4\n')
    assert cli_config("--seed", "3", config=cfg).options == {"temperature": 0.5, "top_k": 4, "seed": 3}
    assert cli_config("--temperature", "1.2", config=cfg).options == {"temperature": 1.2, "top_k": 4}


def test_cli_sampling_flags_without_a_temperature_are_one_line_errors():
    with pytest.raises(jetspec.JetSpecError, match=r"^--top-k/--seed only apply when sampling; give --temperature > 0$"):
        cli_config("--top-k", "5", "--seed", "1")
    with pytest.raises(jetspec.JetSpecError, match="--top-p only apply when sampling"):
        cli_config("--temperature", "0", "--top-p", "0.5")
