"""Generative retriever: embeds the history, encodes it (HSTU or SASRec) and emits an
l2-normalised user embedding at every position, to be matched against l2-normalised items.

Shapes: T tokens, B sequences, D embedding dim, I items (+1 for padding id 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.model.embeddings import InputEmbedding
from genrec.model.hstu import HSTUEncoder
from genrec.model.sasrec import SASRecEncoder
from genrec.model.similarity import build_similarity


class SequentialRetriever(nn.Module):
    def __init__(self, config: ModelConfig, num_items: int, max_seq_len: int, use_time: bool) -> None:
        super().__init__()
        self.num_items = num_items
        self.max_seq_len = max_seq_len
        self.embedding = InputEmbedding(num_items, config.embedding_dim, max_seq_len, config.dropout)
        if config.architecture == "hstu":
            self.encoder: nn.Module = HSTUEncoder(config, max_seq_len, use_time)
        elif config.architecture == "sasrec":
            self.encoder = SASRecEncoder(config, max_seq_len)
        else:
            raise ValueError(f"unknown architecture {config.architecture!r}")
        self.similarity = build_similarity(config)

    def forward(self, batch: SequenceBatch, num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """User embedding after every token: [T, D], l2-normalised. With num_targets, the last
        num_targets[b] tokens of each sequence are candidates (see genrec.ops.hstu_attention)."""
        x = self.embedding(batch.item_ids, batch.seq_offsets, num_targets)
        x = self.encoder(x, batch.seq_offsets, batch.timestamps, num_targets)
        return F.normalize(x, dim=-1)

    # --- the M-FALCON interface (history tokens, candidate tokens, candidate outputs) -------------
    def history_tokens(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None,
                       labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One user's history as encoder input: ([L, D], per-token timestamps)."""
        offsets = torch.tensor([0, item_ids.numel()], device=item_ids.device)
        return self.embedding(item_ids, offsets), timestamps

    def candidate_tokens(self, item_ids: torch.Tensor, position: int) -> torch.Tensor:
        """Candidates as encoder input, all at token position `position` (right after the history)."""
        position = torch.full_like(item_ids, min(position, self.embedding.position.num_embeddings - 1))
        return self.embedding.item(item_ids) * self.embedding.scale + self.embedding.position(position)

    def candidate_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(hidden, dim=-1)

    def item_embeddings(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """l2-normalised item embeddings: [I, D] for the whole table (row 0 = padding) or [*ids, D]."""
        return self.embedding.normalized_items(item_ids)
