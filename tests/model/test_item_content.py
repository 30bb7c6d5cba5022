"""Item content in item tokens (model.item_representation): the rows by hand, who learns, and what is refused."""

import pytest
import torch

from genrec.config import ModelConfig
from genrec.model.embeddings import InputEmbedding, ItemContent
from genrec.model.retrieval import SequentialRetriever

# items 1-3 of a catalogue of 3: genres {1, 2}, {2}, {2} and years 3, 4, 4: items 2 and 3 share their content
CONTENT = ItemContent(torch.tensor([[0, 0, 0], [1, 2, 3], [2, 0, 4], [2, 0, 4]]),
                      torch.tensor([[0, 0, 0], [0.5, 0.5, 1], [1, 0, 1], [1, 0, 1]]), num_codes=4)


def embedding(representation: str) -> InputEmbedding:
    torch.manual_seed(0)
    return InputEmbedding(3, 8, 5, 0.0, representation=representation,
                          content=None if representation == "id" else CONTENT)


def test_content_rows_are_each_features_mean_summed():
    table = embedding("content").content.table.weight
    rows = embedding("content").items(torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(rows[1], (table[1] + table[2]) / 2 + table[3])
    torch.testing.assert_close(rows[2], table[2] + table[4])
    torch.testing.assert_close(rows[2], rows[3])  # the same content: the same item, to this model
    assert not rows[0].any()  # padding


def test_id_plus_content_adds_the_learned_row():
    both = embedding("id+content")
    ids = torch.tensor([1, 2, 3])
    torch.testing.assert_close(both.items(ids), both.item(ids) + both.content(ids))
    assert not torch.equal(both.items(ids)[1], both.items(ids)[2])
    whole = both.normalized_items()
    torch.testing.assert_close(whole[1:], both.normalized_items(ids))
    assert whole.shape == (4, 8)


def test_the_id_representation_is_unchanged_by_the_option():
    torch.manual_seed(0)
    plain = InputEmbedding(3, 8, 5, 0.0)
    assert torch.equal(plain.item.weight, embedding("id").item.weight)
    assert embedding("id").content is None and embedding("content").item is None


def test_content_rows_learn_and_padding_does_not():
    content = embedding("content")
    content.items(torch.tensor([0, 2])).sum().backward()
    grad = content.content.table.weight.grad
    assert grad[2].abs().sum() > 0 and grad[4].abs().sum() > 0
    assert not grad[0].any() and not grad[1].any() and not grad[3].any()


def test_representation_and_content_must_agree():
    with pytest.raises(ValueError, match="'content' needs item content"):
        InputEmbedding(3, 8, 5, 0.0, representation="content")
    with pytest.raises(ValueError, match="'id' reads no item content"):
        InputEmbedding(3, 8, 5, 0.0, content=CONTENT)
    with pytest.raises(ValueError, match="covers 3 items, not 4"):
        InputEmbedding(4, 8, 5, 0.0, representation="content", content=CONTENT)
    with pytest.raises(ValueError, match="must be id, content or id\\+content"):
        InputEmbedding(3, 8, 5, 0.0, representation="ids")


def test_a_model_is_rebuilt_from_its_saved_weights():
    config = ModelConfig(embedding_dim=8, qk_dim=8, v_dim=8, item_representation="id+content")
    model = SequentialRetriever(config, 3, 5, use_time=False, item_content=CONTENT)
    state = model.state_dict()
    rebuilt = SequentialRetriever(config, 3, 5, use_time=False, item_content=ItemContent.in_weights(state))
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.item_embeddings(), model.item_embeddings())
    assert ItemContent.in_weights(SequentialRetriever(ModelConfig(), 3, 5, use_time=False).state_dict()) is None
