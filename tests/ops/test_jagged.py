import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.ops.jagged import (jagged_to_padded, lengths_from_offsets, merge_by_time, offsets_from_lengths,
                               padded_to_jagged, positions_in_sequence, positions_with_successor, prepend_prefix,
                               rows_before_next, sequence_ids)

lengths_strategy = st.lists(st.integers(0, 7), min_size=1, max_size=6)


@settings(max_examples=50, deadline=None)
@given(lengths_strategy)
def test_offsets_round_trip(lengths):
    offsets = offsets_from_lengths(torch.tensor(lengths))
    assert offsets.dtype == torch.int64
    assert offsets.tolist()[0] == 0 and offsets.tolist()[-1] == sum(lengths)
    assert lengths_from_offsets(offsets).tolist() == lengths


@settings(max_examples=50, deadline=None)
@given(lengths_strategy)
def test_positions_and_ids_match_python_loop(lengths):
    offsets = offsets_from_lengths(torch.tensor(lengths))
    expected_pos = [p for n in lengths for p in range(n)]
    expected_ids = [b for b, n in enumerate(lengths) for _ in range(n)]
    assert positions_in_sequence(offsets).tolist() == expected_pos
    assert sequence_ids(offsets).tolist() == expected_ids


@settings(max_examples=50, deadline=None)
@given(lengths_strategy)
def test_padded_round_trip_and_padding_value(lengths):
    offsets = offsets_from_lengths(torch.tensor(lengths))
    values = torch.randn(sum(lengths), 3)
    padded = jagged_to_padded(values, offsets, max(lengths) + 1, padding_value=-7.0)
    assert padded.shape == (len(lengths), max(lengths) + 1, 3)
    for b, n in enumerate(lengths):
        assert torch.all(padded[b, n:] == -7.0)
    assert torch.equal(padded_to_jagged(padded, offsets), values)


def test_jagged_to_padded_rejects_too_long():
    offsets = offsets_from_lengths(torch.tensor([3]))
    try:
        jagged_to_padded(torch.zeros(3), offsets, 2)
    except ValueError as error:
        assert "exceeds max_len" in str(error)
    else:
        raise AssertionError("expected ValueError")


def test_positions_with_successor_skip_each_last_token():
    offsets = offsets_from_lengths(torch.tensor([3, 1, 0, 2]))
    assert positions_with_successor(offsets).tolist() == [0, 1, 4]
    assert positions_with_successor(offsets_from_lengths(torch.tensor([], dtype=torch.int64))).numel() == 0


def test_prepend_prefix_puts_rows_in_front_of_each_sequence():
    values = torch.arange(5.0).view(5, 1)  # sequences [0, 1], [], [2, 3, 4]
    offsets = torch.tensor([0, 2, 2, 5])
    prefix = -torch.arange(1.0, 7.0).view(3, 2, 1)  # two rows per sequence
    out, new_offsets, rows = prepend_prefix(values, offsets, prefix)
    assert new_offsets.tolist() == [0, 4, 6, 11]
    assert out.view(-1).tolist() == [-1, -2, 0, 1, -3, -4, -5, -6, 2, 3, 4]
    torch.testing.assert_close(out[rows], values)


def sorted_times(lengths, draw):
    """Per-sequence non-decreasing times from few values (so that ties are common)."""
    return [sorted(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))) for n in lengths]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_merge_by_time_matches_a_python_merge(data):
    first_lengths = data.draw(lengths_strategy)
    second_lengths = data.draw(st.lists(st.integers(0, 7), min_size=len(first_lengths), max_size=len(first_lengths)))
    first, second = sorted_times(first_lengths, data.draw), sorted_times(second_lengths, data.draw)
    first_offsets, second_offsets = offsets_from_lengths(torch.tensor(first_lengths)), \
        offsets_from_lengths(torch.tensor(second_lengths))
    order, offsets = merge_by_time(first_offsets, torch.tensor(sum(first, []), dtype=torch.int64),
                                   second_offsets, torch.tensor(sum(second, []), dtype=torch.int64))
    expected, num_first = [], sum(first_lengths)
    for b in range(len(first_lengths)):  # (time, 0 = first / 1 = second, row): first's rows first at equal times
        rows = [(t, 0, int(first_offsets[b]) + i) for i, t in enumerate(first[b])]
        rows += [(t, 1, num_first + int(second_offsets[b]) + i) for i, t in enumerate(second[b])]
        expected += [row for _, _, row in sorted(rows)]
    assert order.tolist() == expected
    assert lengths_from_offsets(offsets).tolist() == [a + b for a, b in zip(first_lengths, second_lengths)]
    # each second-set token's row, and the last merged row before its sequence's next second-set token
    rows = torch.empty_like(order)
    rows[order] = torch.arange(order.numel())
    read = rows_before_next(rows[num_first:], second_offsets, offsets).tolist()
    for b in range(len(second_lengths)):
        mine = rows[num_first:][second_offsets[b]:second_offsets[b + 1]].tolist()
        for i in range(len(mine)):
            expected_row = mine[i + 1] - 1 if i + 1 < len(mine) else int(offsets[b + 1]) - 1
            assert read[int(second_offsets[b]) + i] == expected_row
