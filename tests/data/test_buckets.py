import numpy as np
import pytest
import torch

from genrec.data.batch import SequenceBatch
from genrec.data.buckets import bucket_tokens, pad_to_bucket, padded_sequences
from genrec.ops.jagged import offsets_from_lengths


def test_buckets_round_up_by_at_most_an_eighth_and_are_few():
    buckets = {bucket_tokens(t) for t in range(1, 1 << 15)}
    assert all(t <= bucket_tokens(t) <= max(t * 1.125, t + 1) for t in range(1, 1 << 15))
    assert len(buckets) <= 8 * 15 + 8
    assert bucket_tokens(2048) == 2048 and bucket_tokens(2049) == 2304


@pytest.mark.parametrize("max_sequences, max_seq_len", [(32, 24), (7, 2), (128, 200)])
def test_every_batch_pads_to_the_same_number_of_sequences_and_keeps_its_rows(max_sequences, max_seq_len):
    rng = np.random.default_rng(0)
    num_sequences = padded_sequences(max_sequences, max_seq_len)
    for trial in range(200):
        count = int(rng.integers(1, max_sequences + 1))
        lengths = torch.from_numpy(rng.integers(1 if trial % 2 else max_seq_len, max_seq_len + 1, count))
        tokens = int(lengths.sum())
        batch = SequenceBatch(torch.randint(1, 50, (tokens,)), offsets_from_lengths(lengths), max_seq_len,
                              timestamps=torch.arange(tokens), labels=torch.rand(tokens, 2),
                              context=torch.randint(1, 4, (count, 3)), token_query_times=torch.arange(tokens) + 1,
                              positions=torch.randint(0, max_seq_len, (tokens,)))
        padded = pad_to_bucket(batch, num_sequences)
        assert padded.num_sequences == num_sequences
        assert padded.item_ids.numel() == bucket_tokens(tokens + num_sequences - count)
        assert torch.equal(padded.item_ids[:tokens], batch.item_ids) and (padded.item_ids[tokens:] == 0).all()
        assert torch.equal(padded.seq_offsets[:count + 1], batch.seq_offsets)
        pad_lengths = padded.lengths[count:]
        assert pad_lengths.min() >= 1 and pad_lengths.max() <= max_seq_len
        assert torch.equal(padded.labels[:tokens], batch.labels) and (padded.context[count:] == 0).all()
        assert torch.equal(padded.token_query_times[:tokens], batch.token_query_times)
        assert torch.equal(padded.positions[:tokens], batch.positions)
        assert padded.timestamps_sorted


def test_a_padded_batch_gives_the_real_rows_their_outputs():
    from genrec.config import preset
    from genrec.model import SequentialRetriever

    config = preset("hstu")
    config.model.embedding_dim = config.model.qk_dim = config.model.v_dim = 16
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, 40, 24, use_time=True, context_cardinalities=(3,)).eval()
    lengths = torch.tensor([5, 1, 24, 9])
    batch = SequenceBatch(torch.randint(1, 41, (39,)), offsets_from_lengths(lengths), 24,
                          timestamps=torch.cumsum(torch.randint(0, 5000, (39,)), 0),
                          context=torch.tensor([[1], [2], [3], [0]]))
    padded = pad_to_bucket(batch, padded_sequences(8, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:39], model(batch))


def test_too_large_a_batch_is_refused():
    batch = SequenceBatch(torch.ones(6, dtype=torch.int64), offsets_from_lengths(torch.tensor([2, 2, 2])), 2)
    with pytest.raises(ValueError, match="does not fit"):
        pad_to_bucket(batch, 3)
