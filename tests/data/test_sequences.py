import numpy as np
import pytest

from genrec.data import Events, build_sequences, leave_one_out, make_batch
from genrec.data.sequences import event_order
from genrec.data.splits import sample_users, train_on_share


def events(users, items, stamps=None):
    return Events(np.array(users), np.array(items), None if stamps is None else np.array(stamps))


def test_sorting_remapping_and_dropping():
    data = build_sequences(events([2, 1, 1, 2, 3], [30, 20, 10, 20, 99], [5, 2, 1, 4, 7]), min_length=2)
    assert data.dropped_users == 1  # user 3 has one event
    assert data.user_vocab.tolist() == [1, 2]
    assert data.item_vocab.tolist() == [10, 20, 30, 99]
    assert data.sequences.item_ids.tolist() == [1, 2, 2, 3]  # user 1: 10, 20; user 2: 20, 30 by time
    assert data.sequences.offsets.tolist() == [0, 2, 4]


def test_tie_orders():
    # all stamps equal: stable keeps file order, whatever the sort
    tied = events([1] * 20, list(range(20, 0, -1)), [7] * 20)
    stable = build_sequences(tied, "stable")
    assert stable.sequences.item_ids.tolist() == list(range(20, 0, -1))
    paper_order = event_order(tied, "paper")
    assert sorted(paper_order.tolist()) == list(range(20))
    with pytest.raises(ValueError, match="tie_order"):
        event_order(tied, "random")


def test_paper_tie_order_is_pandas_sort_then_groupby():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    users, items, stamps = rng.integers(1, 30, 3000), rng.integers(1, 500, 3000), rng.integers(0, 40, 3000)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "ts": stamps})
    grouped = frame.sort_values(by=["ts"]).groupby("user_id")
    expected = [i for _, group in grouped for i in group.item_id.tolist()]
    order = event_order(events(users, items, stamps), "paper")
    assert items[order].tolist() == expected


def test_leave_one_out_modes():
    data = build_sequences(events([1] * 4 + [2] * 3, [1, 2, 3, 4, 5, 6, 7], list(range(7))), min_length=3)
    paper = leave_one_out(data, "paper")
    assert paper.valid is None
    assert paper.train.compact().item_ids.tolist() == [1, 2, 3, 5, 6]
    assert paper.train.item_counts(7).tolist() == [0, 1, 1, 1, 0, 1, 1, 0]  # the held-out 4 and 7 not counted
    assert paper.test.target_items.tolist() == [4, 7]
    validated = leave_one_out(data, "validated")
    assert validated.train.compact().item_ids.tolist() == [1, 2, 5]
    assert validated.train.num_events == 3 and validated.train.item_ids is data.sequences.item_ids  # a view
    assert validated.valid.target_items.tolist() == [3, 6]
    assert validated.valid.histories.compact().item_ids.tolist() == [1, 2, 5]
    assert validated.test.histories.compact().item_ids.tolist() == [1, 2, 3, 5, 6]
    assert validated.test.histories.select(np.array([1])).compact().item_ids.tolist() == [5, 6]
    with pytest.raises(ValueError, match="mode"):
        leave_one_out(data, "peeking")


def test_a_user_sample_keeps_each_users_history_target_and_time():
    users = np.repeat(np.arange(1, 41), 3)
    data = build_sequences(events(users, np.arange(1, 121), np.arange(120)), min_length=2)
    test = leave_one_out(data, "paper").test
    sample = sample_users(test, 10, seed=7)
    assert sample.histories.num_users == 10 and sample is not test
    kept = (sample.target_items - 3) // 3  # user u's items are 3u+1..3u+3; its target 3u+3
    assert np.all(np.diff(kept) > 0) and len(set(kept)) == 10  # distinct users, in user order
    assert sample.histories.compact().item_ids.tolist() == [i for u in kept for i in (3 * u + 1, 3 * u + 2)]
    assert sample.target_timestamps.tolist() == (sample.target_items - 1).tolist()
    assert np.array_equal(sample_users(test, 10, seed=7).target_items, sample.target_items)
    assert not np.array_equal(sample_users(test, 10, seed=8).target_items, sample.target_items)
    assert sample_users(test, 0, seed=7) is test and sample_users(test, 40, seed=7) is test


def test_a_training_share_nests_and_leaves_evaluation_whole():
    users = np.repeat(np.arange(1, 41), 4)
    split = leave_one_out(build_sequences(events(users, np.arange(1, 161), np.arange(160)), min_length=3),
                          "validated")
    shares = {f: train_on_share(split, f, seed=3) for f in (0.1, 0.25, 0.5)}
    firsts = {f: (share.train.compact().item_ids[::2] - 1) // 4 for f, share in shares.items()}  # each user's first
    assert [len(firsts[f]) for f in shares] == [4, 10, 20]  # ceil(fraction * 40) users
    assert all(np.all(np.diff(kept) > 0) for kept in firsts.values())  # in user order
    assert set(firsts[0.1]) < set(firsts[0.25]) < set(firsts[0.5])  # one seed: nested
    assert set(train_on_share(split, 0.25, seed=4).train.compact().item_ids) != set(
        shares[0.25].train.compact().item_ids)
    for share in shares.values():  # every user still validated and tested, on the same histories
        assert share.valid is split.valid and share.test is split.test
    assert shares[0.5].train.compact().item_ids.reshape(-1, 2).tolist() == [[4 * u + 1, 4 * u + 2] for u in firsts[0.5]]
    assert train_on_share(split, 1.0, seed=3) is split


def test_make_batch_truncates_to_most_recent():
    data = build_sequences(events([1] * 5 + [2] * 2, [1, 2, 3, 4, 5, 6, 7], list(range(7))))
    batch = make_batch(data.sequences, np.array([1, 0]), max_seq_len=3)
    assert batch.item_ids.tolist() == [6, 7, 3, 4, 5]
    assert batch.seq_offsets.tolist() == [0, 2, 5]
    assert batch.timestamps.tolist() == [5, 6, 2, 3, 4]
    assert batch.timestamps_sorted  # the drop from 6 to 2 is between sequences


def test_batch_knows_whether_each_sequence_is_in_time_order():
    import torch

    from genrec.data import SequenceBatch

    def batch(stamps, lengths):
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)
        return SequenceBatch(torch.ones(int(offsets[-1]), dtype=torch.int64), offsets, max_seq_len=8,
                             timestamps=torch.tensor(stamps, dtype=torch.int64))

    assert batch([1, 1, 3, 0, 2], [3, 0, 2]).timestamps_sorted  # ties and an empty sequence
    assert not batch([1, 3, 2, 0, 2], [3, 0, 2]).timestamps_sorted
    assert not batch([5, 6, 2, 3, 1], [2, 3]).timestamps_sorted  # the last pair of the last sequence
    assert batch([7], [0, 1, 0]).timestamps_sorted
    with pytest.raises(ValueError, match="timestamps must be"):
        batch([1, 2], [3])
