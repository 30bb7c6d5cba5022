"""Retrieval inference: top-K items for user embeddings, exactly (chunked inner product, bounded
memory) or approximately through a FAISS index (optional extra `ann`).

Shapes: B queries, D dim, I items (row 0 of an item table is padding and never returned),
K results, T excluded ids in total (jagged, with exclude_offsets [B+1]).
"""

from __future__ import annotations

from typing import Callable

import torch


def _check(queries: torch.Tensor, items: torch.Tensor, k: int) -> None:
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(f"expected queries [B, D] and items [I, D]; got {tuple(queries.shape)}, {tuple(items.shape)}")
    if not 0 < k <= items.shape[0] - 1:
        raise ValueError(f"k must be in [1, {items.shape[0] - 1}] (the number of real items), got {k}")


def top_k_exact(queries: torch.Tensor, items: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None,
                exclude_offsets: torch.Tensor | None = None, chunk_size: int = 65536,
                similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-K over items[1:], chunk by chunk: maximum inner product search, or the best scores of
    `similarity(queries [B, D], items [C, D]) -> [B, C]` (e.g. a model's mixture of logits).

    exclude_ids / exclude_offsets: per query, ids never to return (e.g. the user's history).
    Returns (scores [B, K], item ids [B, K]), best first; an excluded-out slot scores -inf.
    """
    _check(queries, items, k)
    num_queries = queries.shape[0]
    best_scores = queries.new_full((num_queries, 0), float("-inf"), dtype=torch.float32)
    best_ids = torch.zeros((num_queries, 0), dtype=torch.int64, device=queries.device)
    if exclude_ids is not None:
        counts = exclude_offsets[1:] - exclude_offsets[:-1]
        exclude_rows = torch.repeat_interleave(torch.arange(num_queries, device=queries.device), counts)
    for start in range(1, items.shape[0], chunk_size):
        end = min(start + chunk_size, items.shape[0])
        chunk = items[start:end]
        scores = (queries @ chunk.T if similarity is None else similarity(queries, chunk)).float()  # [B, C]
        if exclude_ids is not None:
            inside = (exclude_ids >= start) & (exclude_ids < end)
            scores[exclude_rows[inside], exclude_ids[inside] - start] = float("-inf")
        chunk_scores, chunk_ids = scores.topk(min(k, end - start), dim=1)
        merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
        merged_ids = torch.cat([best_ids, chunk_ids + start], dim=1)
        best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best_ids = merged_ids.gather(1, order)
    return best_scores, best_ids


def recall_at_k(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean fraction of the exact top-K that the approximate top-K also returns."""
    hits = (approx_ids.unsqueeze(2) == exact_ids.unsqueeze(1)).any(dim=2).sum(dim=1)
    return (hits.double() / exact_ids.shape[1]).mean().item()


class FaissIndex:
    """Inner-product index over items[1:]: "flat" (exact), "hnsw" (graph search: the best recall per query time,
    slow to build at millions of items) or "ivf" (inverted lists over k-means cells: built in a fraction of the
    time, searched in `breadth` cells). breadth: HNSW's efSearch or IVF's nprobe, settable after building."""

    def __init__(self, items: torch.Tensor, kind: str = "hnsw", hnsw_neighbors: int = 32,
                 breadth: int = 128, ivf_cells: int = 0, seed: int = 0) -> None:
        """ivf_cells: IVF's k-means cells (0: 4 sqrt(items), FAISS's rule of thumb), trained on the items
        themselves with `seed`."""
        try:
            import faiss
        except ImportError as error:
            raise ValueError("FAISS indexes need faiss (pip install 'genrec[ann]')") from error
        vectors = items[1:].detach().float().cpu().contiguous().numpy()
        dim = vectors.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivf":
            cells = ivf_cells or max(1, min(round(4 * vectors.shape[0] ** 0.5), vectors.shape[0]))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            self.index.train(vectors)
        else:
            raise ValueError(f"index kind must be 'flat', 'hnsw' or 'ivf', got {kind!r}")
        self.kind = kind
        self.index.add(vectors)
        self.num_items = vectors.shape[0]
        self.breadth = breadth

    @property
    def breadth(self) -> int:
        return self._breadth

    @breadth.setter
    def breadth(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"the search breadth must be >= 1, got {value}")
        self._breadth = value
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = value
        elif self.kind == "ivf":
            self.index.nprobe = min(value, self.index.nlist)

    def search(self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None,
               exclude_offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like top_k_exact; excluded ids are filtered after over-fetching by the longest exclusion list."""
        if not 0 < k <= self.num_items:
            raise ValueError(f"k must be in [1, {self.num_items}], got {k}")
        extra = 0
        if exclude_ids is not None and exclude_offsets.numel() > 1:
            extra = int((exclude_offsets[1:] - exclude_offsets[:-1]).max())
        fetch = min(self.num_items, k + extra)
        scores, rows = self.index.search(queries.detach().float().cpu().contiguous().numpy(), fetch)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(rows).long() + 1  # row r is item r + 1
        if exclude_ids is not None:
            for query in range(ids.shape[0]):
                banned = exclude_ids[exclude_offsets[query]:exclude_offsets[query + 1]].cpu()
                scores[query, torch.isin(ids[query], banned)] = float("-inf")
        scores[ids <= 0] = float("-inf")  # faiss pads missing results with -1
        scores, order = scores.topk(k, dim=1)
        return scores, ids.gather(1, order)
