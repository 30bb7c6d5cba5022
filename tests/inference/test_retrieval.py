import pytest
import torch
import torch.nn.functional as F

from genrec.inference.retrieval import FaissIndex, recall_at_k, top_k_exact
from genrec.ops.jagged import offsets_from_lengths


def brute_force(queries, items, k, excluded):
    scores = (queries @ items.T).float()
    scores[:, 0] = float("-inf")
    for row, ids in enumerate(excluded):
        scores[row, ids] = float("-inf")
    return scores.topk(k, dim=1)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_exact_equals_brute_force(chunk_size):
    torch.manual_seed(0)
    items, queries = F.normalize(torch.randn(101, 8), dim=-1), torch.randn(5, 8)
    excluded = [[1, 2, 3], [], [50], list(range(1, 40)), [100]]
    flat = torch.tensor([i for ids in excluded for i in ids], dtype=torch.int64)
    offsets = offsets_from_lengths(torch.tensor([len(ids) for ids in excluded]))
    scores, ids = top_k_exact(queries, items, 10, flat, offsets, chunk_size=chunk_size)
    expected_scores, expected_ids = brute_force(queries, items, 10, excluded)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(ids, expected_ids)
    for row, banned in enumerate(excluded):
        assert not set(ids[row].tolist()) & set(banned) and 0 not in ids[row].tolist()


def test_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        top_k_exact(torch.randn(1, 4), torch.randn(5, 4), 5)


def test_recall_at_k():
    assert recall_at_k(torch.tensor([[1, 2, 3]]), torch.tensor([[3, 2, 9]])) == pytest.approx(2 / 3)


def test_faiss_indexes_against_exact():
    pytest.importorskip("faiss")
    torch.manual_seed(1)
    items, queries = F.normalize(torch.randn(2001, 16), dim=-1), torch.randn(20, 16)
    exclude = torch.tensor([5, 6, 7], dtype=torch.int64)
    offsets = offsets_from_lengths(torch.tensor([3] + [0] * 19))
    exact_scores, exact_ids = top_k_exact(queries, items, 20, exclude, offsets)
    flat_scores, flat_ids = FaissIndex(items, kind="flat").search(queries, 20, exclude, offsets)
    assert recall_at_k(flat_ids, exact_ids) == 1.0
    torch.testing.assert_close(flat_scores, exact_scores, atol=1e-5, rtol=1e-5)
    _, hnsw_ids = FaissIndex(items, kind="hnsw").search(queries, 20, exclude, offsets)
    assert recall_at_k(hnsw_ids, exact_ids) >= 0.9
    assert not set(hnsw_ids[0].tolist()) & {5, 6, 7}
    ivf = FaissIndex(items, kind="ivf", breadth=1)
    assert ivf.index.nlist == 179  # 4 sqrt(2000)
    _, one_cell = ivf.search(queries, 20, exclude, offsets)
    ivf.breadth = ivf.index.nlist  # every cell: exact
    all_scores, all_cells = ivf.search(queries, 20, exclude, offsets)
    assert recall_at_k(one_cell, exact_ids) < 0.9 and recall_at_k(all_cells, exact_ids) == 1.0
    torch.testing.assert_close(all_scores, exact_scores, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'flat', 'hnsw' or 'ivf'"):
        FaissIndex(items, kind="lsh")


def test_exact_top_k_with_a_learned_similarity():
    torch.manual_seed(0)
    queries, items = torch.randn(3, 4), torch.randn(40, 4)
    similarity = lambda q, x: -torch.cdist(q, x)  # noqa: E731 -- nearest neighbours, not inner products
    scores, ids = top_k_exact(queries, items, 5, chunk_size=7, similarity=similarity)
    expected_scores, expected_ids = similarity(queries, items[1:]).topk(5, dim=1)
    assert torch.equal(ids, expected_ids + 1)
    torch.testing.assert_close(scores, expected_scores)
