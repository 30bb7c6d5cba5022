"""Activation checkpointing per layer (model.checkpoint_layers): a layer run this way keeps only its
input for the backward pass and recomputes its activations there, trading ~1/3 more compute for the
memory of long sequences. Dropout draws the same mask in the recomputation (the RNG state is replayed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_layer(layer: nn.Module, recompute: bool, *args: Any) -> torch.Tensor:
    """layer(*args); with `recompute` (and gradients on), its activations are recomputed in backward."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)
