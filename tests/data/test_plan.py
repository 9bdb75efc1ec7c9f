"""The epoch plan and the shuffle order: pure functions every rank must agree on."""

import itertools

import pytest

from cnclip_scale.data import state as st


def _layout(world, workers, batch, mode="exact", drop_last=False, seed=0):
    return st.Layout(world, workers, batch, mode, drop_last, seed, samples=0)


@pytest.mark.parametrize(
    "total,world,workers,batch",
    [
        (17, 2, 2, 3),
        (17, 2, 2, 4),
        (3, 2, 2, 2),
        (100, 4, 3, 7),
        (9, 3, 1, 3),
        (10, 2, 0, 4),
        (25, 2, 4, 2),
    ],
)
def test_exact_plan_covers_every_sample_once_with_equal_batches(total, world, workers, batch):
    layout = _layout(world, workers, batch)
    nb = st.batches_per_rank(total, layout)
    covered = []
    for rank in range(world):
        plans = st.plan_rank(total, layout, rank)
        assert sum(len(p.batch_sizes) for p in plans) == nb  # same batch count on every rank
        for p in plans:
            assert all(1 <= b <= batch for b in p.batch_sizes)  # never an empty or oversized batch
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
    layout = st.Layout(2, 3, 4, "resampled", False, 0, samples=17)
    assert st.batches_per_rank(layout.epoch_total, layout) == 2
    layout = st.Layout(2, 3, 4, "resampled", False, 0, epoch_samples=80, samples=17)
    assert layout.epoch_total == 80 and st.batches_per_rank(layout.epoch_total, layout) == 10
    plans = st.plan_rank(80, layout, 1)
    assert [len(p.batch_sizes) for p in plans] == [4, 3, 3] and {b for p in plans for b in p.batch_sizes} == {4}


def test_impossible_exact_plans_fail_at_plan_time():
    assert st.batches_per_rank(1, _layout(2, 1, 4)) == 0  # fewer samples than ranks: nothing to plan
    with pytest.raises(ValueError, match="non-empty batches"):
        st.plan_rank(3, _layout(2, 1, 1), 0)  # batch 1: rank 1 has 1 sample but 2 batches


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
        assert index <= position + max(bufsize, 1)  # streams: never reads far ahead


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


def _consume(layout, epoch, positions_by_rank, view_before=None):
    """Positions of the epoch's sequence the given slot positions took (recomputed like a worker does)."""
    view = view_before or st.EpochView(layout.epoch_total)
    taken = []
    for rank, positions in positions_by_rank.items():
        plans = st.plan_rank(view.total, layout, rank)
        for slot, position in positions.items():
            plan = plans[slot]
            order = st.buffered_order(
                range(plan.stop - plan.start),
                layout.shuffle_buffer,
                st.slot_seed(layout, epoch, rank, slot, view.level),
            )
            base = view.remaining if view.remaining is not None else range(view.total)
            taken += [base[plan.start + i] for i in itertools.islice(order, position)]
    return taken


def test_epoch_view_after_layout_changes_holds_exactly_what_no_rank_took():
    old = st.Layout(2, 2, 3, "exact", False, 5, shuffle_buffer=4, samples=40)
    ranks = {0: {0: 5, 1: 3}, 1: {0: 6}}
    first = st.epoch_view(
        old,
        2,
        {
            "layout": old.__dict__,
            "ranks": {str(r): {str(s): p for s, p in v.items()} for r, v in ranks.items()},
            "from": None,
        },
    )
    taken = _consume(old, 2, ranks)
    assert len(set(taken)) == 14 and sorted(taken + first.remaining) == list(range(40)) and first.level == 1
    new = st.Layout(3, 1, 2, "exact", False, 5, shuffle_buffer=4, samples=40)
    again = {0: {0: 2}, 2: {0: 3}}
    chained = {
        "layout": new.__dict__,
        "ranks": {str(r): {str(s): p for s, p in v.items()} for r, v in again.items()},
        "from": {
            "layout": old.__dict__,
            "ranks": {str(r): {str(s): p for s, p in v.items()} for r, v in ranks.items()},
            "from": None,
        },
    }
    second = st.epoch_view(new, 2, chained)
    taken_again = _consume(new, 2, again, first)
    assert sorted(taken + taken_again + second.remaining) == list(range(40)) and second.level == 2


def test_epoch_view_resampled_keeps_the_epoch_size():
    old = st.Layout(2, 1, 4, "resampled", False, 0, epoch_samples=100, samples=17)
    view = st.epoch_view(old, 0, {"layout": old.__dict__, "ranks": {"0": {"0": 12}, "1": {"0": 12}}, "from": None})
    assert view.total == 76 and view.remaining is None


def test_epoch_view_trims_leftovers_no_plan_could_balance():
    old = st.Layout(1, 1, 4, "exact", False, 0, samples=9)
    new = st.Layout(3, 1, 1, "exact", False, 0, samples=9)
    view = st.epoch_view(new, 0, {"layout": old.__dict__, "ranks": {"0": {"0": 4}}, "from": None})
    assert view.total == 3 and all(len(p.batch_sizes) == 1 for r in range(3) for p in st.plan_rank(3, new, r))
