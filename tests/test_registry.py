"""Registry: hooks collect named implementations; bad plugins are reported in one line each and
never break the others; capabilities are checked at build time."""

import pytest
from pydantic import BaseModel

import jetspec
from jetspec.core.errors import ConfigError, IncompatibleError
from jetspec.core.registry import Implementation, Registry, check_compatible


class NoOptions(BaseModel):
    pass


class GoodPlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self):
        return [Implementation("good", lambda o, t: None, NoOptions, "fine")]

    @jetspec.hookimpl
    def jetspec_tree_scorers(self):
        return [Implementation("good-scorer", lambda o: None, NoOptions)]

    @jetspec.hookimpl
    def jetspec_verifiers(self):
        return [Implementation("good-verifier", lambda o: None, NoOptions)]

    @jetspec.hookimpl
    def jetspec_kv_caches(self):
        return [Implementation("good-cache", lambda o, i, c: None, NoOptions)]

    @jetspec.hookimpl
    def jetspec_attention_backends(self):
        return [Implementation("good-attention", lambda o: None, NoOptions)]

    @jetspec.hookimpl
    def jetspec_targets(self):
        return [Implementation("good-target", lambda o, a: None, NoOptions)]


class RaisingPlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self):
        raise RuntimeError("boom\nsecond line")


class DuplicatePlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self):
        return [Implementation("ngram", lambda o, t: None, NoOptions)]


class BadOptionsPlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self):
        return [Implementation("bad-options", lambda o, t: None, dict)]


class MisspelledPlugin:
    @jetspec.hookimpl
    def jetspec_drafter(self):  # the hook is jetspec_drafters
        return [Implementation("misspelled", lambda o, t: None, NoOptions)]


class UnmarkedPlugin:
    def jetspec_drafters(self):  # no @jetspec.hookimpl: pluggy skips it
        return [Implementation("unmarked", lambda o, t: None, NoOptions)]


class WrongSignaturePlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self, target):
        return [Implementation("wrong-signature", lambda o, t: None, NoOptions)]


class OneImplementationPlugin:
    @jetspec.hookimpl
    def jetspec_drafters(self):  # the hook returns a list
        return Implementation("lonely", lambda o, t: None, NoOptions)


def make(*plugins):
    return Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=plugins, entry_points=False)


def test_every_hook_registers_a_named_implementation():
    reg = make(("good", GoodPlugin()))
    assert not reg.problems
    # jetspec_drafters jetspec_tree_scorers jetspec_verifiers jetspec_kv_caches jetspec_attention_backends jetspec_targets
    for kind, name in [("drafter", "good"), ("scorer", "good-scorer"), ("verifier", "good-verifier"),
                       ("kv_cache", "good-cache"), ("attention", "good-attention"), ("target", "good-target")]:
        assert reg.get(kind, name).plugin == "good"


@pytest.mark.parametrize(
    "plugin, expected",
    [
        (RaisingPlugin(), "plugin 'bad' raised in jetspec_drafters: RuntimeError: boom"),
        (DuplicatePlugin(), "plugin 'bad' registers drafter 'ngram', already provided by 'jetspec.builtins'; ignored"),
        (BadOptionsPlugin(), "plugin 'bad': drafter 'bad-options' options must be a pydantic model class"),
    ],
)
def test_a_broken_plugin_is_one_line_and_the_rest_still_work(plugin, expected):
    reg = make(("bad", plugin), ("good", GoodPlugin()))
    assert len(reg.problems) == 1 and reg.problems[0].startswith(expected)
    assert "\n" not in reg.problems[0]
    assert reg.get("drafter", "good").plugin == "good"
    assert reg.get("drafter", "ngram").plugin == "jetspec.builtins"


HOOKS = "jetspec_targets, jetspec_drafters, jetspec_tree_scorers, jetspec_verifiers, jetspec_kv_caches, jetspec_attention_backends"


@pytest.mark.parametrize(
    "plugin, expected",
    [
        (MisspelledPlugin(), f"plugin 'bad': 'jetspec_drafter' is not a jetspec hook (did you mean 'jetspec_drafters'?); hooks: {HOOKS}"),
        (UnmarkedPlugin(), "plugin 'bad': 'jetspec_drafters' lacks @jetspec.hookimpl, so it registers nothing"),
        (OneImplementationPlugin(), "plugin 'bad': jetspec_drafters returned one Implementation; a hook returns a list of "
                                    "jetspec.Implementation (return [Implementation(...)])"),
    ],
)
def test_pluggy_silent_pitfalls_are_one_line(plugin, expected):
    reg = make(("bad", plugin), ("good", GoodPlugin()))
    assert reg.problems == [expected]
    assert reg.get("drafter", "good").plugin == "good"


def test_an_unmarked_misspelled_function_is_reported_too():
    class Both:
        def jetspec_scorers(self):
            return []

    assert make(("bad", Both())).problems == [
        f"plugin 'bad': 'jetspec_scorers' is not a jetspec hook (did you mean 'jetspec_tree_scorers'?); hooks: {HOOKS}"
    ]


def test_a_wrong_hook_signature_keeps_pluggys_whole_reason():
    reg = make(("bad", WrongSignaturePlugin()))
    (problem,) = reg.problems
    assert problem.startswith("plugin 'bad' failed to load: invalid hook: Plugin 'bad' for hook 'jetspec_drafters'; ")
    assert "hookimpl definition: jetspec_drafters(target); Argument(s) {'target'} are declared" in problem
    assert "\n" not in problem and "wrong-signature" not in reg.names("drafter")


def test_an_unknown_name_says_which_plugins_failed_and_why():
    reg = Registry.create(builtin_modules=("jetspec.builtins", "no_such_module_xyz"), entry_points=False)
    with pytest.raises(ConfigError) as e:
        reg.get("drafter", "xyz")
    assert str(e.value).endswith(
        "; plugin problems: plugin 'no_such_module_xyz' failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )


def test_a_plugin_that_fails_to_import_is_reported():
    reg = Registry.create(builtin_modules=("jetspec.builtins", "no_such_module_xyz"), entry_points=False)
    assert reg.problems == ["plugin 'no_such_module_xyz' failed to load: ModuleNotFoundError: No module named 'no_such_module_xyz'"]
    assert "ngram" in reg.names("drafter")


def test_unknown_names_and_options_list_what_is_allowed():
    reg = make()
    with pytest.raises(ConfigError, match=r"unknown drafter 'nope'; registered: .*ngram"):
        reg.get("drafter", "nope")
    with pytest.raises(ConfigError, match=r"drafter 'ngram': bogus: unknown field \(options: n_max, n_min"):
        reg.options("drafter", "ngram", {"bogus": 1})


def test_capabilities_are_checked_in_one_sentence():
    drafter = Implementation("needy", None, NoOptions, requires=frozenset({"target:hidden_states"}))
    plain_target = Implementation("plain", None, NoOptions, provides=frozenset({"other"}))
    with pytest.raises(IncompatibleError) as e:
        check_compatible({"drafter": drafter, "target": plain_target})
    assert str(e.value) == "drafter 'needy' needs a target that provides 'hidden_states', but target 'plain' provides other"
    check_compatible({"drafter": drafter, "target": Implementation("rich", None, NoOptions, provides=frozenset({"hidden_states"}))})


def test_entry_point_plugins_can_be_restricted(monkeypatch):
    monkeypatch.setenv("JETSPEC_PLUGINS", "none")
    reg = Registry.create(builtin_modules=jetspec.BUILTINS)
    assert reg.plugins == ["jetspec.builtins"]
