"""Which launches the exact (position-invariant) tree attention takes: the row tiles and the one-or-two
launch rule (`triton_invariant_attention.py` runs them). No bit of any row depends on a choice here;
each is a speed choice the host makes before a forward, so a CUDA graph records one and keys on it.

    one launch   tiles of TAIL_ROWS packed rows, each reading its sequence's whole prefix, a program per split
    two launches the prefix in tiles of `row_tiles(R)` rows (64 or 128), leaving each row's running
                 state; then the tree's own keys in TAIL_ROWS tiles, which resume the states and fold

For sequences s of R_s packed (token, head) rows over T_s committed keys, one launch reads

    extra = sum_s (cdiv(R_s, TAIL_ROWS) - cdiv(R_s, B)) * T_s      (B: launch 1's tile rows)

prefix keys more than two do, each of `key_bytes` (K and V of every KV head in one layer), and
saves a launch and the states' round trip through memory. It is taken while extra * key_bytes <=
ONE_LAUNCH_EXTRA_BYTES — always for chains and for trees of one TAIL_ROWS tile (extra = 0). The
threshold is where `bench/packed_attention.py` measured the two forms equal at SmolLM2's keys
(bench/RESULTS.md: 3 KV heads x 64 dims in bf16, 768 B; 1-32 sequences of 9-33 nodes, 256 and 1024
keys), counted in bytes so that larger keys (Qwen3-8B: 4 KiB) take one launch for fewer extra keys
(not measured there).
"""

from __future__ import annotations

from typing import Sequence

TAIL_ROWS = 16  # row tile of the one launch and of launch 2: per-token blocks cost a dot per four tokens of the tile
ONE_LAUNCH_EXTRA_BYTES = 12_288 * 768  # the most extra prefix bytes one launch may read: 12,288 of SmolLM2's keys


def row_tiles(rows: int) -> tuple[int, int]:
    """(BLOCK_M, warps) of launch 1 (and of a chain's one launch) for `rows` packed (token, head)
    rows. Free to follow the shape: a row's arithmetic does not depend on it (`_online_softmax`)."""
    from ..core.invariant import interpreted  # imports triton: here, when a forward asks

    if interpreted() or rows <= TAIL_ROWS:
        return TAIL_ROWS, 4
    return (64, 4) if rows <= 64 else (128, 8)


def key_bytes(kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes of one committed key in one layer's pool: K and V of every KV head."""
    return 2 * kv_heads * head_dim * element_size


def one_launch_for(rows: Sequence[int], prefix_lens: Sequence[int], block_m: int, chain: bool, key_bytes: int) -> bool:
    """One launch or two (module docstring) for sequences of rows[s] packed rows over prefix_lens[s]
    committed keys of key_bytes each, launch 1 in tiles of block_m rows. Python ints: asked once per
    forward on the host, where a numpy call costs more than the sum (S <= a batch)."""
    if chain:
        return True
    extra = sum((-(-r // TAIL_ROWS) + (-r // block_m)) * t for r, t in zip(rows, prefix_lens))  # keys
    return extra * key_bytes <= ONE_LAUNCH_EXTRA_BYTES


def one_launch_tiles(one_launch: bool, chain: bool, block_m: int) -> int:
    """The row tile a forward's tables are made for: a tree's one launch runs TAIL_ROWS tiles,
    a chain's and launch 1 of two `block_m`."""
    return TAIL_ROWS if one_launch and not chain else block_m
