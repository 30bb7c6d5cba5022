import pytest
import torch

from genrec.data.batch import SequenceBatch, successors
from genrec.data.stochastic_length import (expected_attention_work, stochastic_length, stochastic_length_keep,
                                           stochastic_length_successors)
from genrec.ops.jagged import offsets_from_lengths


def batch_of(lengths, max_seq_len=100):
    offsets = offsets_from_lengths(torch.tensor(lengths, dtype=torch.int64))
    total = int(offsets[-1])
    return SequenceBatch(item_ids=torch.arange(1, total + 1), seq_offsets=offsets, max_seq_len=max_seq_len,
                         timestamps=torch.arange(total) * 10, labels=torch.arange(total, dtype=torch.float32)[:, None])


def test_successors_are_the_next_value_or_zero_at_each_last_token():
    offsets = offsets_from_lengths(torch.tensor([3, 0, 1, 2]))
    item_ids = torch.tensor([5, 6, 7, 8, 9, 4])
    assert successors(item_ids, offsets).tolist() == [6, 7, 0, 0, 4, 0]
    assert successors(item_ids[:0], offsets_from_lengths(torch.tensor([0]))).numel() == 0


def test_short_sequences_and_alpha_two_are_untouched():
    batch = batch_of([5, 10, 1])  # N = 100, alpha 1.0: kept length 10
    same = stochastic_length(batch, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(same.item_ids, batch.item_ids) and torch.equal(same.seq_offsets, batch.seq_offsets)
    long = batch_of([100, 60])
    assert torch.equal(stochastic_length(long, 2.0, torch.Generator()).item_ids, long.item_ids)


def test_long_sequences_are_cut_with_the_papers_probability():
    max_seq_len, alpha, length = 100, 1.6, 60  # kept length 100^0.8 = 39; P(cut) = 1 - 100^1.6 / 60^2
    batch = batch_of([length] * 400, max_seq_len)
    out = stochastic_length(batch, alpha, torch.Generator().manual_seed(1))
    kept = int(max_seq_len ** (alpha / 2))
    new_lengths = out.lengths
    assert set(new_lengths.tolist()) == {kept, length}
    expected = 1 - max_seq_len ** alpha / length ** 2
    assert abs(float((new_lengths == kept).float().mean()) - expected) < 0.07
    # every sequence is a subsequence of its original, in time order, with its fields aligned
    for b in range(out.num_sequences):
        start, end = int(out.seq_offsets[b]), int(out.seq_offsets[b + 1])
        items = out.item_ids[start:end]
        assert bool((items[1:] > items[:-1]).all())
        assert bool(((items - 1) // length == b).all())  # drawn from sequence b only
        assert torch.equal(out.timestamps[start:end], (items - 1) * 10)
        assert torch.equal(out.labels[start:end, 0], (items - 1).float())


def test_a_cut_keeps_the_preferred_tokens_first_with_the_same_draws():
    """N = 100, alpha 1.0: a cut keeps 10. Sequence 0 prefers 4 tokens (kept, with 6 others), sequence 1 prefers 30
    (10 of them kept), sequence 2 none (10 others); whether each is cut does not depend on prefer."""
    batch = batch_of([60, 50, 40])
    prefer = torch.zeros(150, dtype=torch.bool)
    prefer[[3, 17, 40, 59]] = True
    prefer[80:110] = True
    plain = stochastic_length_keep(batch, 1.0, torch.Generator().manual_seed(2))
    keep = stochastic_length_keep(batch, 1.0, torch.Generator().manual_seed(2), prefer)
    sequences = [slice(0, 60), slice(60, 110), slice(110, 150)]
    assert [int(plain[rows].sum()) for rows in sequences] == [int(keep[rows].sum()) for rows in sequences] == [10] * 3
    assert keep[[3, 17, 40, 59]].all() and int(keep[80:110].sum()) == 10 and not keep[60:80].any()
    # with nothing preferred, a cut is the one drawn without prefer
    assert torch.equal(keep[110:], plain[110:])


def test_a_contiguous_cut_keeps_a_run_of_consecutive_events_from_a_uniform_start():
    """N = 100, alpha 1.6: a cut keeps 39 consecutive events of 60, with the uniform draw's probability, from
    starts spread over all 22 possible."""
    max_seq_len, alpha, length = 100, 1.6, 60
    batch = batch_of([length] * 400, max_seq_len)
    out = stochastic_length(batch, alpha, torch.Generator().manual_seed(1), contiguous=True)
    kept = int(max_seq_len ** (alpha / 2))
    assert set(out.lengths.tolist()) == {kept, length}
    assert abs(float((out.lengths == kept).float().mean()) - (1 - max_seq_len ** alpha / length ** 2)) < 0.07
    starts = []
    for b in range(out.num_sequences):
        items = out.item_ids[int(out.seq_offsets[b]):int(out.seq_offsets[b + 1])]
        assert torch.equal(items, torch.arange(int(items[0]), int(items[0]) + len(items)))  # consecutive
        assert bool(((items - 1) // length == b).all())
        if len(items) == kept:
            starts.append(int(items[0] - 1) % length)
    assert min(starts) == 0 and max(starts) == length - kept and len(set(starts)) > 15
    with pytest.raises(ValueError, match="contiguous"):
        stochastic_length_keep(batch, alpha, torch.Generator(), torch.ones(batch.item_ids.shape[0], dtype=torch.bool),
                               contiguous=True)


def test_a_cut_with_successors_keeps_the_uniform_draw_and_each_kept_events_true_successor():
    """N = 100, alpha 1.0: a cut keeps 10 of 60 (the uniform cut's draws); every kept event's target is the event right
    after it in the whole history and its query time that event's time; the last event has none (0) and asks about
    its own time. A sequence that is not cut keeps its plain targets and query times."""
    batch = batch_of([60, 5, 40])  # item ids 1..105, timestamps 10 * (id - 1)
    out, targets = stochastic_length_successors(batch, 1.0, torch.Generator().manual_seed(4))
    uniform = stochastic_length(batch, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(out.item_ids, uniform.item_ids) and torch.equal(out.seq_offsets, uniform.seq_offsets)
    assert out.lengths.tolist() == [10, 5, 10]
    last = torch.tensor([60, 65, 105])
    kept_last = torch.isin(out.item_ids, last)
    assert torch.equal(targets, torch.where(kept_last, 0, out.item_ids + 1))
    assert torch.equal(out.token_query_times, torch.where(kept_last, out.timestamps, out.timestamps + 10))
    assert out.timestamps_sorted  # successors' times never decrease either
    assert not torch.equal(targets[:9], out.item_ids[1:10])  # not the next kept events: some successors dropped


@pytest.mark.parametrize("successors", [False, True])
def test_a_cut_can_keep_each_events_position_in_the_whole_history(successors):
    batch = batch_of([60, 5, 40])  # item id - 1 = the flat index, so a kept token's position is its id - 1 - start
    generator = torch.Generator().manual_seed(4)
    out = (stochastic_length_successors(batch, 1.0, generator, original_positions=True)[0] if successors
           else stochastic_length(batch, 1.0, generator, original_positions=True))
    starts = torch.repeat_interleave(torch.tensor([0, 60, 65]), out.lengths)
    assert out.lengths.tolist() == [10, 5, 10] and torch.equal(out.positions, out.item_ids - 1 - starts)
    assert stochastic_length(batch, 1.0, torch.Generator().manual_seed(4)).positions is None


def test_successors_without_a_cut_are_the_next_tokens():
    batch = batch_of([5, 10, 1])  # nothing longer than the kept length 10
    out, targets = stochastic_length_successors(batch, 1.0, torch.Generator().manual_seed(0))
    assert out is batch and targets.tolist() == [2, 3, 4, 5, 0, *range(7, 16), 0, 0]


def test_a_training_batch_with_query_times_is_refused():
    batch = batch_of([60])
    batch = SequenceBatch(item_ids=batch.item_ids, seq_offsets=batch.seq_offsets, max_seq_len=100,
                          timestamps=batch.timestamps, query_times=torch.tensor([10_000]))
    with pytest.raises(ValueError, match="no query times"):
        stochastic_length_successors(batch, 1.0, torch.Generator())


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be in"):
        stochastic_length(batch_of([3]), 2.5, torch.Generator())


def test_per_user_context_and_change_tokens_travel_unchanged():
    batch = batch_of([60, 3])
    batch.context = torch.tensor([[1, 2], [3, 4]])
    batch.series_codes, batch.series_timestamps = torch.tensor([2, 1, 3]), torch.tensor([0, 100, 5])
    batch.series_offsets = torch.tensor([0, 2, 3])
    out = stochastic_length(batch, 1.0, torch.Generator().manual_seed(0))
    assert out.lengths.tolist() == [10, 3] and torch.equal(out.context, batch.context)
    for name in ("series_codes", "series_timestamps", "series_offsets"):
        assert torch.equal(getattr(out, name), getattr(batch, name)), name


@pytest.mark.parametrize("alpha", [1.6, 1.8])
def test_expected_attention_work_is_what_the_sampler_leaves(alpha):
    """The formula the long-sequence benchmark reports (paper Table 3) against the sampler it describes:
    the mean over draws of sum(kept length^2) on ragged lengths, short ones included."""
    lengths = [1, 7, 20, 39, 40, 55, 80, 100, 100, 64] * 30
    batch = batch_of(lengths)
    generator = torch.Generator().manual_seed(5)
    draws = [float((stochastic_length(batch, alpha, generator).lengths.double() ** 2).sum()) for _ in range(40)]
    expected = expected_attention_work(torch.tensor(lengths), 100, alpha)
    full = float((torch.tensor(lengths, dtype=torch.float64) ** 2).sum())
    assert expected < 0.8 * full  # the check below is not trivially met by leaving everything whole
    assert abs(sum(draws) / len(draws) - expected) < 0.01 * full
