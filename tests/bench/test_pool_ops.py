"""`bench/pool_ops.py`: a pooled draft-ahead job's host dispatches outside its graph do not grow with
the number of sequences it drafts for (no per-sequence tensor ops: one upload, one gather each)."""

from bench.pool_ops import count


def test_a_pooled_jobs_dispatches_do_not_grow_with_its_peers():
    few, many = count(3), count(16)
    assert few == many and 0 < sum(many.values()) <= 40
    assert many["select"] <= 1 and many["lift_fresh"] <= 1  # no view per peer, one host tensor sent


def test_on_the_kernel_path_the_jobs_inputs_are_copies_and_the_fill_is_in_the_graph():
    """--kernel (what CUDA runs, in Triton's interpreter: conftest.py): the step's inputs copied into
    static buffers in place of the torch path's gathers, the fill's launch inside the job's graph body
    (no host launch), fewer dispatches in all, none per peer."""
    torch_path, kernel = count(16), count(16, kernel=True)
    assert kernel == count(3, kernel=True) and kernel["triton_launch"] == 0
    assert not {"index", "index_copy_", "index_select", "minimum"} & set(kernel)
    assert sum(kernel.values()) < sum(torch_path.values())
