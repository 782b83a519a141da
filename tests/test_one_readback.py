"""A round reads the device once: with a verifier that accepts on the device, whatever a target's
forward returns (logits, hidden states, and everything computed from them) reaches the host
through exactly one copy per round, the packed path; nothing is read element by element.

On a CPU-only machine "device memory" is simulated: the target's outputs are `DeviceOnly`
tensors, which refuse every host read (tolist, item, int, bool, numpy, iteration) and count each
copy into a plain tensor. Ops on them yield `DeviceOnly` tensors again, so the rule follows the
data through the verifier, the KV commit and the drafter's inputs."""

import pytest
import torch

import jetspec
from jetspec.core.errors import PluginError
from jetspec.testing.models import tiny_decoder
from support.registry import make_test_registry

REG = make_test_registry()
HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.__iter__, torch.Tensor.cpu}


class HostRead(AssertionError):
    pass


class DeviceOnly(torch.Tensor):
    copies_out = 0  # copies of DeviceOnly data into plain (host) tensors
    device_memory: set[int] = set()  # storages of plain tensors that stand for device memory (the tree upload's block)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            raise HostRead(f"device data read on the host through {func.__name__}")
        if (func is torch.Tensor.copy_ and not isinstance(args[0], DeviceOnly) and isinstance(args[1], DeviceOnly)
                and args[0].untyped_storage().data_ptr() not in cls.device_memory):
            cls.copies_out += 1
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


class DeviceOnlyTarget:
    """The kit's tiny decoder, its outputs marked as device memory."""

    provides = ("hidden_states",)
    tokenizer = None

    def __init__(self, seed: int):
        self.inner = tiny_decoder(seed)
        self.info = self.inner.info

    def forward(self, tokens, meta, cache, hidden_layers=()):
        out = self.inner.forward(tokens, meta, cache, hidden_layers)
        out.logits = out.logits.as_subclass(DeviceOnly)
        out.hidden = None if out.hidden is None else out.hidden.as_subclass(DeviceOnly)
        return out


def run(verifier: str, cache: str, budget: int, seed: int = 1, mode: str = "always"):
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    draws = {"seed": 0} if verifier == "sampling" else {}  # seeded: fresh entropy may draw EOS first, and end in one round
    pipe = (jetspec.builder(REG).target(DeviceOnlyTarget(seed)).drafter("ngram").verifier(verifier, **draws)
            .kv_cache(cache).generation(budget=budget, max_new_tokens=24, accept_on_device=mode).build())
    expected = jetspec.builder(REG).target(tiny_decoder(seed)).drafter("ngram").generation(max_new_tokens=24).build().generate_plain(prompt)
    DeviceOnly.copies_out = 0
    # the upload's device block is the staging buffer itself on a CPU: plain decoding's next root is written
    # there from the packed result (`core/plain_ahead.py`), a device-to-device copy on a GPU
    DeviceOnly.device_memory = {pipe._upload._dev.untyped_storage().data_ptr()}
    result = pipe.generate(prompt)
    return result, expected


@pytest.mark.parametrize("cache", ["dense", "paged"])
@pytest.mark.parametrize("budget", [0, 8])
@pytest.mark.parametrize("verifier", ["greedy", "sampling"])
def test_each_round_copies_one_small_tensor_to_the_host(verifier, cache, budget):
    result, expected = run(verifier, cache, budget)
    assert result.stats.rounds > 1
    assert DeviceOnly.copies_out == result.stats.rounds
    if verifier == "greedy":  # sampling draws its own tokens
        assert result.tokens == expected.tokens


def test_a_verifier_that_reads_the_logits_on_the_host_is_caught():
    class HostGreedy:  # the greedy rule, without accept_on_device
        def accept(self, tree, logits, state):
            from jetspec.verifiers.greedy import accept_greedy
            return accept_greedy(tree, logits.argmax(dim=-1).tolist())

    pipe = (jetspec.builder(REG).target(DeviceOnlyTarget(1)).drafter("ngram")
            .generation(budget=8, max_new_tokens=8, accept_on_device="always").build())
    pipe.verifier = HostGreedy()
    with pytest.raises((HostRead, PluginError), match="tolist"):
        pipe.generate([5, 6, 7, 5, 6, 7])


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_a_cpu_target_reads_its_logits_on_the_host_unless_told_always(mode):
    # "auto" on the CPU: the logits are host memory already, and the host walk costs fewer ops
    with pytest.raises((HostRead, PluginError), match="tolist"):
        run("greedy", "dense", 8, mode=mode)
