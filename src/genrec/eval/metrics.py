"""Retrieval metrics from 1-based target ranks [U] (HR@K, NDCG@K, MRR) and ranking metrics from
logits and 0/1 labels (AUC, normalised entropy)."""

from __future__ import annotations

import math

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


def summarize(ranks: torch.Tensor, ks: tuple[int, ...] = (10, 50, 200),
              nll: torch.Tensor | None = None) -> dict[str, float]:
    """{'hr@k', 'ndcg@k' for each k, 'mrr'}, and 'nll', the mean of the held-out items' negative log-likelihoods
    (nats; genrec.eval.protocol.TargetLikelihood) where given."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to summarise (empty evaluation split)")
    if int(ranks.min()) < 1:
        raise ValueError("ranks are 1-based")
    metrics = {f"hr@{k}": hit_rate(ranks, k) for k in ks}
    metrics.update({f"ndcg@{k}": ndcg(ranks, k) for k in ks})
    metrics["mrr"] = mrr(ranks)
    if nll is not None:
        metrics["nll"] = nll.double().mean().item()
    return metrics


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan without both classes."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average_rank = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based, ties share their mean rank
    return ((average_rank[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)).item()


def normalized_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean log loss divided by the entropy of the labels' base rate (He et al. 2014); < 1 beats
    predicting the base rate. nan when the base rate is 0 or 1."""
    labels = labels.double().flatten()
    base = labels.mean().item()
    if base <= 0.0 or base >= 1.0:
        return float("nan")
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.double().flatten(), labels).item()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    return loss / entropy
