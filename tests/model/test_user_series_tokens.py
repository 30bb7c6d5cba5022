"""Sequentialized user features in the retriever: where change tokens go and which predictions they reach."""

import pytest
import torch

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.model.embeddings import merge_series
from genrec.model.retrieval import SequentialRetriever


def batch(change_codes, change_times, item_times=(10, 20, 30), query_time=None, context=(1, 2)):
    """context: the user's codes, read by the model with a context prefix (the other ignores them)."""
    return SequenceBatch(item_ids=torch.tensor([1, 2, 3]), seq_offsets=torch.tensor([0, 3]), max_seq_len=8,
                         timestamps=torch.tensor(item_times),
                         query_times=None if query_time is None else torch.tensor([query_time]),
                         context=torch.tensor([context]),
                         series_codes=torch.tensor(change_codes), series_timestamps=torch.tensor(change_times),
                         series_offsets=torch.tensor([0, len(change_codes)]))


def make_model(context_cardinalities=()):
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, qk_dim=8, v_dim=8, num_heads=2, dropout=0.0)
    return SequentialRetriever(config, num_items=3, max_seq_len=8, use_time=True, series_cardinality=3,
                               max_series_len=4, context_cardinalities=context_cardinalities).eval()


@pytest.fixture(params=[(), (2, 3)], ids=["changes", "changes-and-context"])
def model(request):
    return make_model(request.param)


@pytest.mark.parametrize("change_times, item_rows", [
    ([15, 25], [0, 2, 4]),  # between the events
    ([5, 20], [1, 3, 4]),  # before the first event; at an event's own time, before it
    ([30, 31], [0, 1, 3]),  # at the last event's time, and after it (a query's change)
])
def test_change_tokens_sit_at_their_times(change_times, item_rows):
    b = batch([1, 2], change_times)
    x = torch.arange(3.0)[:, None]
    merged, offsets, times, rows = merge_series(x, b.seq_offsets, b.timestamps, torch.tensor([[-1.0], [-2.0]]),
                                                b.series_offsets, b.series_timestamps)
    assert rows.tolist() == item_rows and offsets.tolist() == [0, 5]
    assert merged[rows, 0].tolist() == [0.0, 1.0, 2.0]
    assert torch.all(torch.diff(times) >= 0)


def test_a_change_reaches_the_predictions_after_it_and_none_before(model):
    with torch.no_grad():
        base = model(batch([1, 2], [15, 25]))
        later_changed = model(batch([1, 3], [15, 25]))
        earlier_changed = model(batch([3, 2], [15, 25]))
    # position 0 predicts the event at 20: it sees the change at 15, not the one at 25
    torch.testing.assert_close(later_changed[0], base[0])
    assert not torch.allclose(later_changed[1], base[1]) and not torch.allclose(later_changed[2], base[2])
    assert not torch.allclose(earlier_changed[0], base[0])


def test_the_context_prefix_reaches_every_prediction_beside_the_changes():
    model = make_model((2, 3))
    with torch.no_grad():
        base, other = model(batch([1, 2], [15, 25])), model(batch([1, 2], [15, 25], context=(2, 2)))
    assert base.shape == (3, 8)
    assert all(not torch.allclose(other[i], base[i]) for i in range(3))


def test_the_last_position_sees_changes_up_to_the_query_time(model):
    with torch.no_grad():
        without = model(batch([1], [15], query_time=50))
        with_change = model(batch([1, 2], [15, 40], query_time=50))
    torch.testing.assert_close(with_change[:2], without[:2])
    assert not torch.allclose(with_change[2], without[2])


def test_a_batch_without_changes_is_refused(model):
    plain = SequenceBatch(item_ids=torch.tensor([1, 2]), seq_offsets=torch.tensor([0, 2]), max_seq_len=8,
                          timestamps=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="the batch has none"):
        model(plain)
    with pytest.raises(ValueError, match="come together"):
        SequenceBatch(item_ids=torch.tensor([1]), seq_offsets=torch.tensor([0, 1]), max_seq_len=8,
                      timestamps=torch.tensor([1]), series_codes=torch.tensor([1]))
