import pytest
import torch

from genrec.config import preset
from genrec.data.batch import SequenceBatch
from genrec.model.ranking import GenerativeRanker
from genrec.ops.jagged import offsets_from_lengths


def batch(labels, items=None):
    n = labels.shape[0]
    items = torch.arange(1, n + 1) if items is None else items
    return SequenceBatch(items, offsets_from_lengths(torch.tensor([n])), max_seq_len=8,
                         timestamps=torch.arange(n) * 1000, labels=labels)


@pytest.mark.parametrize("with_context", [False, True], ids=["plain", "user-context"])
def test_prediction_sees_its_item_but_not_its_action(with_context):
    config = preset("hstu")
    config.model.embedding_dim = config.model.qk_dim = config.model.v_dim = 16
    torch.manual_seed(0)
    model = GenerativeRanker(config.model, num_items=10, num_tasks=2, max_seq_len=8, use_time=True,
                             context_cardinalities=(3, 4) if with_context else ()).eval()

    def make(labels, items=None, codes=((1, 2),)):
        made = batch(labels, items)
        made.context = torch.tensor(codes) if with_context else None
        return made

    labels = torch.randint(0, 2, (5, 2)).float()
    base = model(make(labels))
    assert base.shape == (5, 2)
    if with_context:  # another user's features change every prediction
        assert not torch.allclose(model(make(labels, codes=((3, 2),))), base)
    flipped = labels.clone()
    flipped[3] = 1 - flipped[3]  # event 3's own action: predictions up to event 3 unchanged
    changed = model(make(flipped))
    torch.testing.assert_close(changed[:4], base[:4])
    assert not torch.allclose(changed[4], base[4])  # later events do see it
    other_item = torch.arange(1, 6)
    other_item[3] = 9  # event 3's item: its own prediction changes (target-aware)
    assert not torch.allclose(model(make(labels, other_item))[3], base[3])



@pytest.mark.parametrize("context", [None, (1, 2)], ids=["changes", "changes-and-context"])
def test_a_change_reaches_the_actions_of_the_events_from_its_time_on(context):
    """Events at 0, 1000, ... 4000; a change at 2500 informs events 3 and 4, one at 2000 event 2 on (a change comes
    before an event of its time), and none of the events before it."""
    config = preset("hstu")
    config.model.embedding_dim = config.model.qk_dim = config.model.v_dim = 16
    torch.manual_seed(0)
    model = GenerativeRanker(config.model, num_items=10, num_tasks=2, max_seq_len=8, use_time=True,
                             series_cardinality=3, max_series_len=4,
                             context_cardinalities=(3, 4) if context else ()).eval()
    labels = torch.randint(0, 2, (5, 2), generator=torch.Generator().manual_seed(1)).float()

    def predict(codes, times):
        made = batch(labels)
        made.context = None if context is None else torch.tensor([context])
        made.series_codes, made.series_timestamps = torch.tensor(codes), torch.tensor(times)
        made.series_offsets = torch.tensor([0, len(codes)])
        with torch.no_grad():
            return model(made)

    base = predict([1, 2], [0, 2500])
    later = predict([1, 3], [0, 2500])
    torch.testing.assert_close(later[:3], base[:3])
    assert not torch.allclose(later[3], base[3]) and not torch.allclose(later[4], base[4])
    at_event = predict([1, 3], [0, 2000])
    torch.testing.assert_close(at_event[:2], base[:2])
    assert not torch.allclose(at_event[2], base[2])
