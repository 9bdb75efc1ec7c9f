"""The epoch plan and the shuffle order: pure functions every rank must agree on."""
import itertools

import pytest

from cnclip_scale.data import state as st


def _layout(world, workers, batch, mode="exact", drop_last=False, seed=0):
    return st.Layout(world, workers, batch, mode, drop_last, seed)


@pytest.mark.parametrize("total,world,workers,batch", [
    (17, 2, 2, 3), (17, 2, 2, 4), (3, 2, 2, 2), (100, 4, 3, 7), (9, 3, 1, 3), (10, 2, 0, 4), (25, 2, 4, 2),
])
def test_exact_plan_covers_every_sample_once_with_equal_batches(total, world, workers, batch):
    layout = _layout(world, workers, batch)
    nb = st.batches_per_rank(total, layout)
    covered = []
    for rank in range(world):
        plans = st.plan_rank(total, layout, rank)
        assert sum(len(p.batch_sizes) for p in plans) == nb          # same batch count on every rank
        for p in plans:
            assert all(1 <= b <= batch for b in p.batch_sizes)        # never an empty or oversized batch
            assert p.stop - p.start == sum(p.batch_sizes)
            covered += range(p.start, p.stop)
    assert sorted(covered) == list(range(total))


def test_drop_last_gives_full_batches_and_leaves_less_than_one_global_batch():
    layout = _layout(2, 2, 3, drop_last=True)
    plans = [p for r in range(2) for p in st.plan_rank(17, layout, r)]
    assert {b for p in plans for b in p.batch_sizes} == {3}
    used = sum(p.stop - p.start for p in plans)
    assert used == 12 and 17 - used < 2 * 3


def test_resampled_plan_fills_full_batches_from_epoch_samples():
    layout = _layout(2, 3, 4, mode="resampled")
    assert st.batches_per_rank(17, layout) == 2
    assert st.batches_per_rank(17, layout, epoch_samples=80) == 10
    plans = st.plan_rank(17, layout, 1, epoch_samples=80)
    assert [len(p.batch_sizes) for p in plans] == [4, 3, 3] and {b for p in plans for b in p.batch_sizes} == {4}


def test_impossible_exact_plans_fail_at_plan_time():
    with pytest.raises(ValueError, match="one sample per rank"):
        st.plan_rank(1, _layout(2, 1, 4), 0)
    with pytest.raises(ValueError, match="non-empty batches"):
        st.plan_rank(3, _layout(2, 1, 1), 0)     # batch 1: rank 1 has 1 sample but 2 batches


def test_rank_batch_sizes_fill_first_then_shrink_the_end():
    assert st.rank_batch_sizes(8, 3, 4) == [4, 3, 1]
    assert st.rank_batch_sizes(9, 3, 4) == [4, 4, 1]
    assert st.rank_batch_sizes(12, 3, 4) == [4, 4, 4]


@pytest.mark.parametrize("bufsize", [0, 1, 4, 50])
def test_buffered_order_is_a_seeded_permutation_with_bounded_lookahead(bufsize):
    order = list(st.buffered_order(range(40), bufsize, ("s", 1)))
    assert sorted(order) == list(range(40))
    assert order == list(st.buffered_order(range(40), bufsize, ("s", 1)))
    if bufsize > 1:
        assert order != list(range(40)) and order != list(st.buffered_order(range(40), bufsize, ("s", 2)))
    for position, index in enumerate(order[: 40 - bufsize]):
        assert index <= position + max(bufsize, 1)                   # streams: never reads far ahead


def test_buffered_order_streams_an_infinite_input():
    head = list(itertools.islice(st.buffered_order(itertools.count(), 8, 0), 100))
    assert len(set(head)) == 100 and max(head) < 108


def test_shard_order_agrees_everywhere_and_changes_per_epoch():
    assert st.shard_order(10, 3, 0, True) == st.shard_order(10, 3, 0, True)
    assert st.shard_order(10, 3, 0, True) != st.shard_order(10, 3, 1, True)
    assert st.shard_order(10, 3, 5, False) == list(range(10))


def test_state_check_names_what_changed():
    layout = _layout(2, 2, 4)
    state = st.fresh_state(3, layout)
    assert st.check_state(state, layout) is None
    assert "world_size 2 -> 4" in st.check_state(state, _layout(4, 2, 4))
