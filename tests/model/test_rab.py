import math

import torch

from genrec.model.rab import RelativeBias
from genrec.ops.attention import dense_bias, time_buckets
from genrec.ops.jagged import offsets_from_lengths


def test_time_bucket_function():
    deltas = torch.tensor([0, 1, -1, 2, 10, -3600, 10**9])
    expected = [0, 0, 0, int(math.log(2) / 0.301), int(math.log(10) / 0.301), int(math.log(3600) / 0.301),
                min(128, int(math.log(10**9) / 0.301))]
    assert time_buckets(deltas, 0.301, 128).tolist() == expected
    assert int(time_buckets(torch.tensor([10**12]), 0.01, 128)) == 128  # clamped


def test_dense_bias_matches_definition():
    """rab[b, i, j] = w_pos[j - i + N - 1] + w_time[bucket(t_{i+1} - t_j)], last query uses its own time."""
    torch.manual_seed(0)
    n_max, lengths = 6, [4, 2]
    rab = RelativeBias(n_max, num_time_buckets=16, time_bucket_scale=0.5)
    offsets = offsets_from_lengths(torch.tensor(lengths))
    stamps = torch.tensor([100, 130, 500, 9000, 7, 50])
    dense = dense_bias(rab(stamps), offsets, 4, n_max)
    assert dense.shape == (2, 1, 4, 4)
    start = 0
    for b, length in enumerate(lengths):
        seq = stamps[start:start + length].tolist()
        for i in range(length):
            query_time = seq[i + 1] if i + 1 < length else seq[i]  # no candidates: history = sequence
            for j in range(length):
                bucket = min(16, int(math.log(max(abs(query_time - seq[j]), 1)) / 0.5))
                expected = rab.position_weights[j - i + n_max - 1] + rab.time_weights[bucket]
                torch.testing.assert_close(dense[b, 0, i, j], expected)
        start += length


def test_disabled_parts():
    offsets = offsets_from_lengths(torch.tensor([3]))
    assert RelativeBias(4, 8, 0.3, use_position=False, use_time=False)(torch.arange(3)) is None
    only_pos = dense_bias(RelativeBias(4, 8, 0.3, use_time=True)(None), offsets, 3, 4)  # no timestamps
    assert only_pos.shape == (1, 1, 3, 3)


def test_candidates_share_the_history_end_position_and_own_time():
    """With m candidates: p(x) = min(x, Lh); query time = next history time, own time at the end."""
    torch.manual_seed(1)
    rab = RelativeBias(8, num_time_buckets=32, time_bucket_scale=0.3)
    stamps = torch.tensor([10, 20, 400, 9000, 50000, 7])  # history 4, candidates 2
    dense = dense_bias(rab(stamps), offsets_from_lengths(torch.tensor([6])), 6, 8, torch.tensor([2]))
    history_len = 4
    for i in range(6):
        query_time = stamps[i + 1] if i + 1 < history_len else stamps[i]
        for j in range(6):
            p_i, p_j = min(i, history_len), min(j, history_len)
            bucket = min(32, int(math.log(max(abs(int(query_time) - int(stamps[j])), 1)) / 0.3))
            expected = rab.position_weights[p_j - p_i + 7] + rab.time_weights[bucket]
            torch.testing.assert_close(dense[0, 0, i, j], expected)


def test_query_timestamps_ask_about_the_event_each_row_predicts():
    from genrec.ops.attention.rab import query_timestamps

    stamps = torch.tensor([10, 20, 30, 40, 50, 60, 70])
    offsets = offsets_from_lengths(torch.tensor([3, 4]))
    # inside the history t_{i+1}; the last history row its own time, or the query time when one is given
    assert query_timestamps(stamps, offsets).tolist() == [20, 30, 30, 50, 60, 70, 70]
    assert query_timestamps(stamps, offsets, query_times=torch.tensor([35, 99])).tolist() == [20, 30, 35, 50, 60,
                                                                                               70, 99]
    # the second sequence's last two tokens are candidates: their own times; its history ends at 50
    targets = torch.tensor([0, 2])
    assert query_timestamps(stamps, offsets, targets, torch.tensor([35, 55])).tolist() == [20, 30, 35, 50, 55,
                                                                                           60, 70]


def test_the_query_time_changes_only_the_last_history_row():
    from genrec.ops import hstu_attention
    from genrec.ops.attention import BucketedBias
    from genrec.ops.attention.rab import query_timestamps

    torch.manual_seed(0)
    stamps = torch.tensor([0, 100, 5000, 90000])
    offsets = offsets_from_lengths(torch.tensor([4]))
    q, k, v = torch.randn(4, 1, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    time_weights = torch.randn(65)

    def attend(query_times):
        queries = query_timestamps(stamps, offsets, query_times=query_times)
        bias = BucketedBias(None, time_weights, stamps, 0.3, query_timestamps=queries)
        return hstu_attention(q, k, v, offsets, max_seq_len=4, alpha=1.0, rab=bias, backend="torch")
    own, later = attend(None), attend(torch.tensor([10_000_000]))
    torch.testing.assert_close(own[:3], later[:3])
    assert not torch.allclose(own[3], later[3])
