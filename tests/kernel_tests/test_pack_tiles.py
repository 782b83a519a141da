"""`pack_tiles`: the tile table of a packed launch — sequence s gets cdiv(N_s * group, block_m)
consecutive tiles, each naming its first row, N_s, its sequence's first tile, its slot-map offset
and s (a tile never spans two sequences)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.kernels.triton_tree_attention import pack_tiles


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 70), min_size=1, max_size=12), group=st.sampled_from([1, 3, 4, 8]),
       block_m=st.sampled_from([16, 32, 64]), data=st.data())
def test_each_sequence_gets_its_tiles_in_order(sizes, group, block_m, data):
    cu = [0]
    for n in sizes:
        cu.append(cu[-1] + n)
    starts = data.draw(st.lists(st.integers(0, 10_000), min_size=len(sizes), max_size=len(sizes)))
    table = pack_tiles(cu, starts, group, block_m).tolist()
    expected, first = [], 0
    for s, n in enumerate(sizes):
        count = math.ceil(n * group / block_m)
        expected += [[cu[s], n, first, starts[s], s]] * count
        first += count
    assert table == expected
