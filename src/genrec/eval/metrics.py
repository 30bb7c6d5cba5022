"""Ranking metrics for one relevant item per user. `ranks` is a 1-based LongTensor [U]."""

from __future__ import annotations

import torch


def hit_rate(ranks: torch.Tensor, k: int) -> float:
    """Fraction of users whose target ranks in the top k."""
    return (ranks <= k).double().mean().item()


def ndcg(ranks: torch.Tensor, k: int) -> float:
    """Mean of 1 / log2(rank + 1) where rank <= k, else 0 (one relevant item: IDCG = 1)."""
    gains = 1.0 / torch.log2(ranks.double() + 1.0)
    return torch.where(ranks <= k, gains, torch.zeros_like(gains)).mean().item()


def mrr(ranks: torch.Tensor) -> float:
    """Mean reciprocal rank over the full ranking (no cut-off)."""
    return (1.0 / ranks.double()).mean().item()


def summarize(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 50, 200)) -> dict[str, float]:
    """{'hr@k', 'ndcg@k' for each k, 'mrr'}."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to summarise (empty evaluation split)")
    if int(ranks.min()) < 1:
        raise ValueError("ranks are 1-based")
    metrics = {f"hr@{k}": hit_rate(ranks, k) for k in ks}
    metrics.update({f"ndcg@{k}": ndcg(ranks, k) for k in ks})
    metrics["mrr"] = mrr(ranks)
    return metrics
