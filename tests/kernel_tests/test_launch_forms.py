"""The exact attention's launch-form rule (`kernels/invariant_launch_forms.py`): one launch in TAIL_ROWS
tiles while the prefix keys it reads beyond two launches' stay few. What it must pick is what the H100
measured (`bench/packed_attention.py`, bench/RESULTS.md, 2026-12-06 14:49: SmolLM2's 3-query groups);
that the forms give the same bits, the kernel tests check (test_invariant_attention.py,
test_triton_packed.py)."""

from __future__ import annotations

import pytest

from jetspec.core.invariant import interpreted
from jetspec.kernels.invariant_launch_forms import TAIL_ROWS, key_bytes, one_launch_for, one_launch_tiles, row_tiles

GROUP = 3  # SmolLM2: 9 query heads over 3 KV heads
KEY = key_bytes(3, 64, 2)  # SmolLM2: K and V of 3 KV heads of 64 dims in bf16, 768 B

# (sequences, nodes each, committed keys each) -> µs per layer of (two launches, one launch in 16-row tiles)
MEASURED = {
    (1, 9, 256): (16.1, 12.3), (1, 17, 256): (16.5, 12.2), (1, 33, 256): (17.9, 12.3),
    (1, 9, 1024): (17.0, 12.9), (1, 17, 1024): (17.2, 13.1), (1, 33, 1024): (18.5, 13.0),
    (8, 9, 256): (16.6, 12.8), (8, 17, 256): (16.8, 14.1), (8, 33, 256): (20.9, 21.0),
    (8, 9, 1024): (19.4, 14.8), (8, 17, 1024): (20.5, 22.7), (8, 33, 1024): (22.9, 34.3),
    (32, 9, 256): (21.4, 21.2), (32, 17, 256): (33.7, 35.2), (32, 33, 256): (46.8, 57.6),
    (32, 9, 1024): (26.5, 38.3), (32, 17, 1024): (41.7, 75.1), (32, 33, 1024): (70.0, 122.8),
}


DECIDED = sorted(s for s, (two, one) in MEASURED.items() if abs(two - one) > 0.1 * min(two, one))  # not ties


def rule(sequences: int, nodes: int, keys: int) -> bool:
    rows = nodes * GROUP
    return one_launch_for([rows] * sequences, [keys] * sequences, two_launch_tiles(rows), chain=False, key_bytes=KEY)


def two_launch_tiles(rows: int) -> int:
    return 64 if rows <= 64 else 128  # row_tiles on a GPU (the interpreter runs 16-row tiles throughout)


@pytest.mark.parametrize("shape", DECIDED)
def test_the_rule_picks_the_form_the_gpu_ran_faster_wherever_the_two_differed_by_more_than_a_tenth(shape):
    two, one = MEASURED[shape]
    assert rule(*shape) == (one < two), f"{shape}: two launches {two} µs, one {one} µs"


def test_chains_and_trees_of_one_tail_tile_take_one_launch_at_any_context():
    for keys in (0, 100, 10_000, 1_000_000):
        assert one_launch_for([7 * GROUP], [keys], 64, chain=True, key_bytes=KEY)
        assert one_launch_for([1_000], [keys], 128, chain=True, key_bytes=KEY)  # a prefill chunk
        assert one_launch_for([TAIL_ROWS] * 64, [keys] * 64, 64, chain=False, key_bytes=KEY)


def test_a_tree_leaves_one_launch_once_its_context_makes_the_extra_reads_too_many():
    rows = 17 * GROUP  # 4 tail tiles against launch 1's one: 3 extra prefix reads per key
    forms = [one_launch_for([rows], [t], 64, chain=False, key_bytes=KEY) for t in range(0, 20_000, 64)]
    assert forms[0] and not forms[-1]
    assert forms == sorted(forms, reverse=True), "one launch, then two: never back"


def test_the_batch_decides_by_the_sum_of_its_sequences_extra_reads():
    rows = 17 * GROUP
    alone = one_launch_for([rows], [1024], 64, chain=False, key_bytes=KEY)
    assert alone and not one_launch_for([rows] * 8, [1024] * 8, 64, chain=False, key_bytes=KEY)
    assert not one_launch_for([rows, rows], [100, 5000], 64, chain=False, key_bytes=KEY)
    assert one_launch_for([rows, 3], [100, 5000], 64, chain=False, key_bytes=KEY)  # the long one is a one-tile tree


def test_larger_keys_leave_one_launch_at_a_proportionally_shorter_context():
    """The extra reads are counted in bytes: Qwen3-8B's keys (8 KV heads of 128 dims, 4 KiB) are 16/3 of
    SmolLM2's, so the same tree switches to two launches at 3/16 of the context."""
    rows = 16 * 4  # 16 nodes, 4 query heads per KV head: 4 tail tiles against launch 1's one

    def switch(key: int) -> int:
        return next(t for t in range(0, 100_000) if not one_launch_for([rows], [t], 64, chain=False, key_bytes=key))

    small, large = switch(KEY), switch(key_bytes(8, 128, 2))
    assert small == 12_288 // 3 + 1 and large == (12_288 * 768) // (3 * 4096) + 1


def test_one_launch_runs_tail_tiles_except_for_chains():
    assert one_launch_tiles(True, False, 128) == TAIL_ROWS
    assert one_launch_tiles(True, True, 128) == 128
    assert one_launch_tiles(False, False, 64) == 64
    if not interpreted():
        assert row_tiles(17 * GROUP) == (64, 4) and row_tiles(33 * GROUP) == (128, 8)
