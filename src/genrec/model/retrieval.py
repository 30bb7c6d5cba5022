"""Generative retriever: embeds the history, encodes it (HSTU or SASRec) and emits an
l2-normalised user embedding at every position, to be matched against l2-normalised items.

With user context (HSTU only), each sequence starts with F prefix tokens, one per user feature,
under the plain causal mask: every event sees them, and each sees only itself and the ones before
it. (The attention's `contextual_seq_len` mask would also let them see the whole history, which
with a next-item loss at every position leaks each target into the positions before it.)

With a sequentialized user feature (HSTU only), each of its changes is a token merged into the sequence by
time; the embedding that predicts the next event is read off the last token before it (an event or a change),
so a change that precedes an event informs its prediction.

Shapes: T tokens, B sequences, F user features, D embedding dim, I items (+1 for padding id 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.model.embeddings import (InputEmbedding, ItemContent, UserContextEmbedding, UserSeriesEmbedding,
                                     add_user_tokens, history_input)
from genrec.model.hstu import HSTUEncoder
from genrec.model.sasrec import SASRecEncoder
from genrec.model.similarity import build_similarity
from genrec.ops.jagged import rows_before_next


class SequentialRetriever(nn.Module):
    def __init__(self, config: ModelConfig, num_items: int, max_seq_len: int, use_time: bool,
                 context_cardinalities: tuple[int, ...] = (), item_content: ItemContent | None = None,
                 series_cardinality: int = 0, max_series_len: int = 0,
                 build_item_table: bool = True) -> None:
        """context_cardinalities: the number of values of each user feature (none: no prefix); item_content: the
        items' content codes, which config.item_representation content or id+content reads; series_cardinality:
        the values of a sequentialized user feature (0: none), at most max_series_len changes a sequence;
        build_item_table: see InputEmbedding."""
        super().__init__()
        self.num_items = num_items
        self.max_seq_len = max_seq_len
        self.embedding = InputEmbedding(num_items, config.embedding_dim, max_seq_len, config.dropout,
                                        config.item_table_dtype, config.item_representation, item_content,
                                        build_item_table)
        self.context = (UserContextEmbedding(context_cardinalities, config.embedding_dim, config.dropout)
                        if context_cardinalities else None)
        self.series = (UserSeriesEmbedding(series_cardinality, config.embedding_dim, config.dropout)
                       if series_cardinality else None)
        if (self.context is not None or self.series is not None) and config.architecture != "hstu":
            raise ValueError("user-context prefix tokens and user-feature change tokens need the HSTU encoder")
        if config.architecture == "hstu":
            max_len = max_seq_len + len(context_cardinalities) + (max_series_len if self.series is not None else 0)
            self.encoder: nn.Module = HSTUEncoder(config, max_len, use_time)
        elif config.architecture == "sasrec":
            self.encoder = SASRecEncoder(config, max_seq_len)
        else:
            raise ValueError(f"unknown architecture {config.architecture!r}")
        self.similarity = build_similarity(config)

    def forward(self, batch: SequenceBatch, num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """User embedding after every token: [T, D], l2-normalised. With num_targets, the last
        num_targets[b] tokens of each sequence are candidates (see genrec.ops.hstu_attention)."""
        x = self.embedding(batch.item_ids, batch.seq_offsets, num_targets, batch.positions)
        x, offsets, timestamps, rows = add_user_tokens(
            x, batch.seq_offsets, batch.timestamps, None if self.series is None else self.series(batch.series_codes),
            batch, None if self.context is None else self.context(batch.context), num_targets)
        if rows is not None and batch.token_query_times is not None:
            raise ValueError("token_query_times are the events' own: not with user-context or user-feature tokens")
        encoded = self.encoder(x, offsets, timestamps, num_targets, sorted_timestamps=batch.timestamps_sorted,
                               query_times=batch.query_times, token_query_times=batch.token_query_times)
        if rows is None:
            return F.normalize(encoded, dim=-1)
        # an event's output is read off the last token before the next event (a change may sit between them)
        return F.normalize(encoded.index_select(0, rows_before_next(rows, batch.seq_offsets, offsets)), dim=-1)

    # --- the M-FALCON interface (history tokens, candidate tokens, candidate outputs) -------------
    def history_tokens(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None,
                       labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                       changes: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One user's history as encoder input: ([F + L + S, D], per-token timestamps), with its change tokens
        and behind its context prefix (codes [F]) when the model reads them (genrec.model.embeddings.history_input)."""
        offsets = torch.tensor([0, item_ids.numel()], device=item_ids.device)
        return history_input(self.embedding(item_ids, offsets), timestamps, self.series, changes, self.context,
                             context)

    def candidate_tokens(self, item_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        return self.embedding.candidates(item_ids, position)

    def candidate_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(hidden, dim=-1)

    def forward_candidate_outputs(self, out: torch.Tensor) -> torch.Tensor:
        return out  # forward's rows are already the l2-normalised embeddings

    def item_embeddings(self, item_ids: torch.Tensor | None = None, own_rows: bool = False) -> torch.Tensor:
        """l2-normalised item embeddings: [I, D] for the whole table (row 0 = padding) or [*ids, D]; own_rows: of
        a table sharded across ranks, ids this rank holds (see item_table)."""
        return self.embedding.normalized_items(item_ids, own_rows)

    @property
    def item_table(self) -> nn.Module:
        """The item embedding table: an nn.Embedding, a table sharded by rows across ranks (its own_ids, own_rows
        and combine let evaluation score each item where its row lives), or None (items embedded by content only)."""
        return self.embedding.item
