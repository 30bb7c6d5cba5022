"""The point-wise feed-forward sublayer of SASRec's Transformer block (official SASRec: D -> D -> D with ReLU
and dropout), shared by SASRec and by HSTU's block ablation (model.feed_forward)."""

from __future__ import annotations

from torch import nn


def point_wise_feed_forward(dim: int, dropout: float) -> nn.Sequential:
    """[..., D] -> [..., D], applied to each token alone; the caller adds the norm and the residual."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(), nn.Linear(dim, dim), nn.Dropout(dropout))


def feed_forward_flops(dim: int) -> int:
    """Matrix-multiply FLOPs per token: two D x D products."""
    return 2 * 2 * dim * dim
