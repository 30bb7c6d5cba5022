import pytest
import torch
import torch.nn.functional as F

from genrec.config import ModelConfig
from genrec.model import similarity as similarity_module
from genrec.model.similarity import DotSimilarity, MixtureOfLogits, build_similarity


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def _mol(dim=12):
    config = ModelConfig(embedding_dim=dim, similarity="mol")
    config.mol.user_components, config.mol.item_components, config.mol.component_dim = 3, 2, 5
    return MixtureOfLogits(config)


def test_dot_is_the_inner_product():
    users, items = _unit(4, 6), _unit(7, 6)
    dot = build_similarity(ModelConfig())
    assert isinstance(dot, DotSimilarity)
    torch.testing.assert_close(dot.all(users, items), users @ items.T)
    torch.testing.assert_close(dot.pairs(users[:, None], items[None]), users @ items.T)


@pytest.mark.parametrize("pairs_per_chunk", [1 << 25, 7], ids=["one-chunk", "many-chunks"])
def test_mixture_all_pairs_equals_pairwise_scores(monkeypatch, pairs_per_chunk):
    monkeypatch.setattr(similarity_module, "_PAIRS_PER_CHUNK", pairs_per_chunk)
    torch.manual_seed(0)
    mol, users, items = _mol(), _unit(4, 12), _unit(9, 12)
    every = mol.all(users, items)
    assert every.shape == (4, 9)
    torch.testing.assert_close(every, mol.pairs(users[:, None], items[None]))
    # a convex combination of cosines
    assert every.abs().max() <= 1.0 + 1e-6


def test_mixture_differs_from_any_single_cosine_and_trains_every_part():
    torch.manual_seed(0)
    mol, users, items = _mol(), _unit(5, 12), _unit(5, 12)
    scores = mol.pairs(users, items)
    scores.sum().backward()
    for name, parameter in mol.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert not torch.allclose(scores, (users * items).sum(-1))


def test_mixture_of_an_empty_catalog():
    assert _mol().all(_unit(2, 12), _unit(0, 12)).shape == (2, 0)
