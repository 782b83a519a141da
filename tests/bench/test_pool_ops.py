"""`bench/pool_ops.py`: a pooled draft-ahead job's host dispatches outside its graph do not grow with
the number of sequences it drafts for (no per-sequence tensor ops: one upload, one gather each)."""

from bench.pool_ops import count


def test_a_pooled_jobs_dispatches_do_not_grow_with_its_peers():
    few, many = count(3), count(16)
    assert few == many and 0 < sum(many.values()) <= 40
    assert many["select"] <= 1 and many["lift_fresh"] <= 1  # no view per peer, one host tensor sent
