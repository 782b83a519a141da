"""One copy of a head's weights per target: a batched run makes a drafter per slot
(`Pipeline.generate_many`), and every slot's drafter of the same checkpoint drafts with the same
frozen module while keeping its own context. A rewritten checkpoint or another target gets its own."""

import os

import torch

from head_fixtures import HeadTarget, tiny_llama
from jetspec.drafters.eagle import eagle_drafter
from jetspec.drafters.head import EagleOptions, HeadOptions, jetspec_drafter, save_head


def a_checkpoint(folder, drafter) -> str:
    save_head(drafter.head, folder, dtype=torch.float32)
    return str(folder)


def test_drafters_of_one_checkpoint_and_target_share_the_head_not_the_context(tmp_path):
    target = HeadTarget(tiny_llama())
    seeded = jetspec_drafter(HeadOptions(checkpoint="random", block_size=4, seed=5), target)
    folder = a_checkpoint(tmp_path / "head", seeded)
    one, two = (jetspec_drafter(HeadOptions(checkpoint=folder, lookup=False), target) for _ in range(2))
    assert one.head is two.head and one.cache is not two.cache
    assert eagle_drafter(EagleOptions(checkpoint="random"), target).head is not one.head  # another kind
    assert jetspec_drafter(HeadOptions(checkpoint=folder, lookup=False), HeadTarget(tiny_llama())).head is not one.head


def test_a_rewritten_checkpoint_is_loaded_anew(tmp_path):
    target = HeadTarget(tiny_llama())
    folder = a_checkpoint(tmp_path / "head", jetspec_drafter(HeadOptions(checkpoint="random", block_size=4, seed=1), target))
    before = jetspec_drafter(HeadOptions(checkpoint=folder), target)
    a_checkpoint(tmp_path / "head", jetspec_drafter(HeadOptions(checkpoint="random", block_size=4, seed=2), target))
    weights = tmp_path / "head" / "head.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))  # a newer file, whatever the clock
    after = jetspec_drafter(HeadOptions(checkpoint=folder), target)
    assert after.head is not before.head
    assert not all(torch.equal(a, b) for a, b in zip(after.head.parameters(), before.head.parameters()))
