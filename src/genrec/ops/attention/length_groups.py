"""The reference attention over groups of sequences of like length: the PyTorch backend's path (the CPU's).

The reference pads every sequence to the batch's longest, so its cost is B * max_len^2 whatever the lengths. Real
histories are heavy-tailed (most users short, a few at max_seq_len), and then nearly all of that work is padding.
Here sequences are grouped by the power of two their length rounds up to, and each group is padded to its own
longest: at most 4x each sequence's own L^2, at the price of one reference call per group (at most
log2(max_seq_len) + 1). The math is the reference's, row for row (tested).

`by_length_groups` runs any per-sequence function this way (the CPU's softmax attention and SASRec stack use it).

Shapes: B sequences, T tokens, G groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from genrec.ops.attention.rab import BucketedBias
from genrec.ops.attention.reference import hstu_attention_reference
from genrec.ops.jagged import lengths_from_offsets, offsets_from_lengths


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the sequences of each group (lengths in (2^(g-1), 2^g], empty ones with length 1), shortest
    group first."""
    tiers = torch.ceil(torch.log2(lengths.clamp(min=1).double())).long()
    return [torch.nonzero(tiers == tier).flatten() for tier in torch.unique(tiers).tolist()]


Index = torch.Tensor | slice


def by_length_groups(function: Callable[[Index, Index, torch.Tensor], torch.Tensor],
                     seq_offsets: torch.Tensor) -> torch.Tensor:
    """function(sequences, rows, group_offsets) -> the rows' outputs [T_g, ...], once per length group (sequences:
    the group's sequence indices; rows: its tokens' rows of the batch, sequence by sequence), put back in the
    batch's token order [T, ...]. A batch of one group is one call with slice(None) for both (no copies)."""
    lengths = lengths_from_offsets(seq_offsets)
    groups = length_groups(lengths)
    if len(groups) <= 1:
        return function(slice(None), slice(None), seq_offsets)
    outputs, rows_of_groups = [], []
    for sequences in groups:
        group_lengths = lengths[sequences]
        group_offsets = offsets_from_lengths(group_lengths)
        rows = (torch.repeat_interleave(seq_offsets[sequences] - group_offsets[:-1], group_lengths)
                + torch.arange(int(group_offsets[-1]), device=seq_offsets.device))
        outputs.append(function(sequences, rows, group_offsets))
        rows_of_groups.append(rows)
    return torch.cat(outputs)[torch.argsort(torch.cat(rows_of_groups))]


def hstu_attention_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, *,
                           max_seq_len: int, alpha: float, num_targets: torch.Tensor | None = None,
                           rab: torch.Tensor | BucketedBias | None = None, max_attn_len: int = 0,
                           contextual_seq_len: int = 0) -> torch.Tensor:
    """hstu_attention_reference's output (same arguments), computed group by group."""
    arguments = dict(max_seq_len=max_seq_len, alpha=alpha, max_attn_len=max_attn_len,
                     contextual_seq_len=contextual_seq_len)
    if isinstance(rab, BucketedBias) and rab.uses_time:  # t' depends on the neighbours: found before the split
        rab = dataclasses.replace(rab, query_timestamps=rab.query_times_for(seq_offsets, num_targets))

    def group(sequences: Index, rows: Index, group_offsets: torch.Tensor) -> torch.Tensor:
        group_targets = None if num_targets is None else num_targets[sequences]
        return hstu_attention_reference(q[rows], k[rows], v[rows], group_offsets, num_targets=group_targets,
                                        rab=_group_bias(rab, sequences, rows), **arguments)

    return by_length_groups(group, seq_offsets)


def _group_bias(rab: torch.Tensor | BucketedBias | None, sequences: Index,
                rows: Index) -> torch.Tensor | BucketedBias | None:
    """The bias of one group: a dense bias's rows of its sequences, a bucketed bias's times of its tokens."""
    if isinstance(rab, torch.Tensor):
        return rab if rab.shape[0] == 1 else rab[sequences]
    if isinstance(rab, BucketedBias) and rab.uses_time:
        return dataclasses.replace(rab, timestamps=rab.timestamps[rows], query_timestamps=rab.query_timestamps[rows])
    return rab
