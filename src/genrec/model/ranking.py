"""Target-aware generative ranking (paper Sec. 2.2): each event becomes two tokens, the item
Phi_i and then its action a_i, and one causal HSTU pass predicts every a_i from the output at
Phi_i, which sees everything before it and the item itself but not its own action. With user
context, F prefix tokens lead each sequence (causal, as in genrec.model.retrieval).

Shapes: T events (2T tokens), D model dim, A action signals / tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.model.embeddings import (InputEmbedding, ItemContent, UserContextEmbedding, UserSeriesEmbedding,
                                     add_user_tokens, history_input)
from genrec.model.hstu import HSTUEncoder


class GenerativeRanker(nn.Module):
    def __init__(self, config: ModelConfig, num_items: int, num_tasks: int, max_seq_len: int, use_time: bool,
                 context_cardinalities: tuple[int, ...] = (), item_content: ItemContent | None = None,
                 build_item_table: bool = True, series_cardinality: int = 0, max_series_len: int = 0) -> None:
        """item_content: the items' content codes, which config.item_representation content or id+content reads;
        build_item_table: see InputEmbedding; series_cardinality: the values of a sequentialized user feature (0:
        none), at most max_series_len changes a sequence, merged in by time (an event's item token sees the
        changes up to its time)."""
        super().__init__()
        if config.architecture != "hstu":
            raise ValueError("the generative ranker is built on HSTU (model.architecture = 'hstu')")
        self.num_items = num_items
        self.max_seq_len = max_seq_len  # in events; the encoder sees 2x as many tokens
        self.embedding = InputEmbedding(num_items, config.embedding_dim, 2 * max_seq_len, config.dropout,
                                        config.item_table_dtype, config.item_representation, item_content,
                                        build_item_table)
        self.action = nn.Linear(num_tasks, config.embedding_dim)  # an action token embeds its signal bits
        self.context = (UserContextEmbedding(context_cardinalities, config.embedding_dim, config.dropout)
                        if context_cardinalities else None)
        self.series = (UserSeriesEmbedding(series_cardinality, config.embedding_dim, config.dropout)
                       if series_cardinality else None)
        max_len = 2 * max_seq_len + len(context_cardinalities) + (max_series_len if series_cardinality else 0)
        self.encoder = HSTUEncoder(config, max_len, use_time)
        self.heads = nn.Linear(config.embedding_dim, num_tasks)

    def _tokens(self, item_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        items = self.embedding.items(item_ids) * self.embedding.scale
        return torch.stack([items, self.action(labels)], dim=1).reshape(-1, items.shape[-1])  # Phi_0, a_0, ...

    def forward(self, batch: SequenceBatch, num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [T, A]: for every event, its action signals predicted before they are seen. With
        num_targets, the last num_targets[b] events of each sequence are candidates (M-FALCON)."""
        if batch.labels is None:
            raise ValueError("ranking batches need per-event action labels")
        tokens = self._tokens(batch.item_ids, batch.labels)
        offsets = batch.seq_offsets * 2
        token_targets = None if num_targets is None else 2 * num_targets
        positions = self.embedding.token_positions(offsets, tokens.shape[0], token_targets)
        x = self.embedding.dropout(tokens + self.embedding.position(positions))
        stamps = None if batch.timestamps is None else torch.repeat_interleave(batch.timestamps, 2)
        x, offsets, stamps, rows = add_user_tokens(
            x, offsets, stamps, None if self.series is None else self.series(batch.series_codes), batch,
            None if self.context is None else self.context(batch.context), token_targets)
        encoded = self.encoder(x, offsets, stamps, token_targets, sorted_timestamps=batch.timestamps_sorted,
                               query_times=batch.query_times)
        return self.heads(encoded[0::2] if rows is None else encoded.index_select(0, rows[0::2]))

    # --- the M-FALCON interface: candidates are item tokens after the whole interleaved history ---
    def history_tokens(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None,
                       labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                       changes: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if labels is None:
            raise ValueError("ranking histories need each event's action signals")
        tokens = self._tokens(item_ids, labels)
        positions = torch.arange(tokens.shape[0], device=tokens.device)
        stamps = None if timestamps is None else torch.repeat_interleave(timestamps, 2)
        return history_input(tokens + self.embedding.position(positions), stamps, self.series, changes, self.context,
                             context)

    def candidate_tokens(self, item_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        return self.embedding.candidates(item_ids, position)

    def candidate_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-task probabilities [C, A]."""
        return torch.sigmoid(self.heads(hidden))

    def forward_candidate_outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)
