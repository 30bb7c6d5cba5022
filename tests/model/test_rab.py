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
            query_time = seq[i + 1] if i + 1 < length else seq[i]
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
