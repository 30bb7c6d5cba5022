"""Input embedding (official HSTU/SASRec recipe): item embedding x sqrt(d) + learned absolute position.

Shapes: T tokens, D embedding dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genrec.ops.jagged import positions_in_sequence, prepend_prefix


class InputEmbedding(nn.Module):
    def __init__(self, num_items: int, embedding_dim: int, max_seq_len: int, dropout: float,
                 table_dtype: str = "float32") -> None:
        """table_dtype: how the item table is stored (float32 | bfloat16); its rows are computed with in fp32."""
        super().__init__()
        self.item = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        self.position = nn.Embedding(max_seq_len, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(embedding_dim)
        nn.init.trunc_normal_(self.item.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.trunc_normal_(self.position.weight, std=math.sqrt(1.0 / embedding_dim))
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.item.to(getattr(torch, table_dtype))  # initialised in fp32 and rounded: the same draws either way

    def forward(self, item_ids: torch.Tensor, seq_offsets: torch.Tensor,
                num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """item_ids [T], seq_offsets [B+1] -> [T, D] (see token_positions)."""
        positions = self.token_positions(seq_offsets, item_ids.shape[0], num_targets)
        return self.dropout(self.items(item_ids) * self.scale + self.position(positions))

    def token_positions(self, seq_offsets: torch.Tensor, num_tokens: int,
                        num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """[T] each token's position: its index in the sequence, but the last num_targets[b] tokens of
        sequence b are candidates and all take the position right after the history, as M-FALCON's cached
        path places them, so that a candidate's score never depends on where it sits among the others."""
        positions = positions_in_sequence(seq_offsets, num_tokens)
        if num_targets is not None:
            lengths = seq_offsets[1:] - seq_offsets[:-1]
            history_len = torch.repeat_interleave(lengths - num_targets, lengths, output_size=num_tokens)
            positions = torch.minimum(positions, history_len)
        return positions.clamp(max=self.position.num_embeddings - 1)

    def candidates(self, item_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """[C, D] M-FALCON's candidates, all at token `position` (right after the history): an int, or a device
        tensor of one element (which a CUDA graph replays with new values)."""
        last = self.position.num_embeddings - 1
        if isinstance(position, int):
            positions = torch.full_like(item_ids, min(position, last))
        else:
            positions = position.clamp(max=last).expand_as(item_ids)
        return self.items(item_ids) * self.scale + self.position(positions)

    def items(self, item_ids: torch.Tensor) -> torch.Tensor:
        """[*ids, D] fp32 rows of the item table, whatever its storage."""
        return self.item(item_ids).float()

    def normalized_items(self, item_ids: torch.Tensor | None = None, own_rows: bool = False) -> torch.Tensor:
        """l2-normalised item embeddings ([num_items + 1, D] for the whole table), fp32. own_rows: a table
        sharded across ranks (genrec.train.sharded_embedding) reads these ids from this rank's rows, with no
        message."""
        if own_rows:
            table = self.item.own_rows(item_ids).float()
        else:
            table = self.item.weight.float() if item_ids is None else self.items(item_ids)
        return F.normalize(table, dim=-1)


class UserContextEmbedding(nn.Module):
    """One token per user feature (the paper's user-context prefix): feature f's code c becomes row c
    of table f (row 0: unknown), scaled like the item embeddings. codes [B, F] -> [B, F, D]."""

    def __init__(self, cardinalities: tuple[int, ...], embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(size + 1, embedding_dim) for size in cardinalities)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(embedding_dim)
        for table in self.tables:
            nn.init.trunc_normal_(table.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, codes: torch.Tensor | None, num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """num_targets: the batch's candidates, which cannot follow a prefix yet (M-FALCON does not
        carry one)."""
        if codes is None:
            raise ValueError("this model reads user-context prefix tokens: the batch has no context")
        if num_targets is not None:
            raise ValueError("candidates (num_targets) after a user-context prefix are not supported")
        if codes.shape[-1] != len(self.tables):
            raise ValueError(f"context has {codes.shape[-1]} features; this model reads {len(self.tables)}")
        tokens = torch.stack([table(codes[:, f]) for f, table in enumerate(self.tables)], dim=1)
        return self.dropout(tokens * self.scale)


def prepend_context(x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None,
                    context_tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Puts each sequence's F context tokens [B, F, D] in front of its tokens x [T, D]. Returns the
    encoder's input [T + B * F, D], its seq_offsets and timestamps (the prefix takes the time of the
    sequence's first token) and rows [T]: where each input token went, to read its output back."""
    x, offsets, rows = prepend_prefix(x, seq_offsets, context_tokens)
    if timestamps is not None:
        first = timestamps[seq_offsets[:-1].clamp(max=max(timestamps.numel() - 1, 0))]
        timestamps = prepend_prefix(timestamps, seq_offsets, first[:, None].expand(-1, context_tokens.shape[1]))[0]
    return x, offsets, timestamps, rows
