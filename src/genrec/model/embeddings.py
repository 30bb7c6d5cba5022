"""Input embedding (official HSTU/SASRec recipe): item embedding x sqrt(d) + learned absolute position. An item's
embedding is its learned row, its content features' rows (genrec.data.item_features), or their sum.

Shapes: T tokens, D embedding dim, I items (+1 for padding id 0), S content code slots per item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.ops.jagged import merge_by_time, positions_in_sequence, prepend_prefix, sequence_ids


ITEM_INIT_BLOCK = 1 << 16  # item-table rows drawn from one generator (see item_rows)


def item_rows(seed: int, lo: int, hi: int, dim: int) -> torch.Tensor:
    """Rows [lo, hi) [hi - lo, D] of an item table initialised under `seed`, on the default device: truncated normal
    (std 0.02, cut at +-0.04) drawn on the CPU block by block of ITEM_INIT_BLOCK rows, each block from its own
    generator, so that any range is drawn without the others (a rank builds only the rows it holds) and equals
    that slice of the whole table; one block at a time is on the host. Row 0 (padding) is zero. Under the meta
    device (a size check): meta rows, nothing drawn."""
    out = torch.empty(hi - lo, dim)
    if _under_meta():
        return out
    for block in range(lo // ITEM_INIT_BLOCK, -(-hi // ITEM_INIT_BLOCK)):
        rows = torch.empty(ITEM_INIT_BLOCK, dim, device="cpu")
        nn.init.trunc_normal_(rows, std=0.02, a=-0.04, b=0.04, generator=torch.Generator().manual_seed(seed + block))
        first, last = max(lo, block * ITEM_INIT_BLOCK), min(hi, (block + 1) * ITEM_INIT_BLOCK)
        out[first - lo:last - lo] = rows[first - block * ITEM_INIT_BLOCK:last - block * ITEM_INIT_BLOCK]
    if lo == 0 < hi:
        out[0] = 0.0
    return out


def _under_meta() -> bool:
    """Whether tensors are being made on the meta device (a size check that allocates and draws nothing)."""
    return torch.empty(0).device.type == "meta"


@dataclass
class ItemContent:
    """Each item's content codes: codes int64 [I + 1, S] (0: an empty slot) into a table of num_codes + 1 rows,
    weights float32 [I + 1, S] (genrec.data.item_features.ItemFeatures.align)."""

    codes: torch.Tensor
    weights: torch.Tensor
    num_codes: int

    @classmethod
    def in_weights(cls, state: dict[str, torch.Tensor], prefix: str = "embedding.content.") -> "ItemContent | None":
        """The content a model's saved weights carry (None when it has none): a run is rebuilt from them."""
        if f"{prefix}codes" not in state:
            return None
        return cls(state[f"{prefix}codes"], state[f"{prefix}weights"], state[f"{prefix}table.weight"].shape[0] - 1)


class ItemContentEmbedding(nn.Module):
    """An item's content row: the weighted sum of its codes' rows (each feature's values averaged, the features
    summed). The codes are buffers saved with the weights, so evaluation and serving read what training read."""

    def __init__(self, content: ItemContent, embedding_dim: int) -> None:
        super().__init__()
        if content.codes.shape != content.weights.shape or content.codes.dim() != 2:
            raise ValueError(f"item content codes {list(content.codes.shape)} and weights "
                             f"{list(content.weights.shape)} must both be [I + 1, S]")
        self.register_buffer("codes", content.codes.to(torch.int64))
        self.register_buffer("weights", content.weights.to(torch.float32))
        self.table = nn.Embedding(content.num_codes + 1, embedding_dim, padding_idx=0)
        nn.init.trunc_normal_(self.table.weight, std=0.02, a=-0.04, b=0.04)
        with torch.no_grad():
            self.table.weight[0].zero_()

    @property
    def num_rows(self) -> int:
        return self.codes.shape[0]

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """[*ids] -> [*ids, D]"""
        return (self.table(self.codes[item_ids]) * self.weights[item_ids].unsqueeze(-1)).sum(-2)


class InputEmbedding(nn.Module):
    def __init__(self, num_items: int, embedding_dim: int, max_seq_len: int, dropout: float,
                 table_dtype: str = "float32", representation: str = "id", content: ItemContent | None = None,
                 build_item_table: bool = True) -> None:
        """table_dtype: how the item table is stored (float32 | bfloat16); its rows are computed with in fp32.
        representation: an item's embedding is its learned row (id), its content's (content, needs `content`
        for items 0..num_items) or their sum (id+content). build_item_table = False leaves the table on the meta
        device, for whoever places its rows (genrec.train.parallel.shard_item_tables) to draw them with
        item_rows(item_seed, ...)."""
        super().__init__()
        if representation not in ("id", "content", "id+content"):
            raise ValueError(f"item representation must be id, content or id+content, not {representation!r}")
        if (content is not None) != ("content" in representation):
            raise ValueError(f"item representation {representation!r} "
                             f"{'needs' if content is None else 'reads no'} item content")
        if content is not None and content.codes.shape[0] != num_items + 1:
            raise ValueError(f"item content covers {content.codes.shape[0] - 1} items, not {num_items}")
        # one draw of the global generator whatever the table's size: the rest of the model gets the same draws
        # whether the table is built here, in ranks' shards, or not at all
        self.item_seed = 0 if _under_meta() else int(torch.randint(0, 1 << 62, ()))
        self.table_dtype = getattr(torch, table_dtype)  # rows initialised in fp32 and rounded: the same draws
        self.item = None
        if "id" in representation:
            self.item = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0, device="meta", dtype=self.table_dtype)
            if build_item_table:
                self.item.weight = nn.Parameter(item_rows(self.item_seed, 0, num_items + 1, embedding_dim)
                                                .to(self.table_dtype))
        self.content = None if content is None else ItemContentEmbedding(content, embedding_dim)
        self.position = nn.Embedding(max_seq_len, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(embedding_dim)
        nn.init.trunc_normal_(self.position.weight, std=math.sqrt(1.0 / embedding_dim))

    def forward(self, item_ids: torch.Tensor, seq_offsets: torch.Tensor, num_targets: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """item_ids [T], seq_offsets [B+1] -> [T, D] (see token_positions); positions [T]: each token's own
        (SequenceBatch.positions) instead."""
        if positions is None:
            positions = self.token_positions(seq_offsets, item_ids.shape[0], num_targets)
        else:
            positions = positions.clamp(max=self.position.num_embeddings - 1)
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
        """[*ids, D] fp32 item embeddings (rows of the item table, whatever its storage, and/or content rows)."""
        if self.content is None:
            return self.item(item_ids).float()
        content = self.content(item_ids)
        return content if self.item is None else self.item(item_ids).float() + content

    def normalized_items(self, item_ids: torch.Tensor | None = None, own_rows: bool = False) -> torch.Tensor:
        """l2-normalised item embeddings ([num_items + 1, D] for the whole table), fp32. own_rows: a table
        sharded across ranks (genrec.train.sharded_embedding) reads these ids from this rank's rows, with no
        message."""
        if own_rows:
            table = self.item.own_rows(item_ids).float()
        elif item_ids is not None:
            table = self.items(item_ids)
        elif self.content is None:
            table = self.item.weight.float()
        else:
            table = self.items(torch.arange(self.content.num_rows, device=self.content.codes.device))
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

    def forward(self, codes: torch.Tensor | None) -> torch.Tensor:
        if codes is None:
            raise ValueError("this model reads user-context prefix tokens: the batch has no context")
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


def add_user_tokens(x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None,
                    series_tokens: torch.Tensor | None, batch, context_tokens: torch.Tensor | None,
                    num_targets: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A batch's tokens x [T, D] with its user tokens: change tokens [S, D] merged in by time (merge_series, from
    batch's series fields; candidates, the last num_targets[b] tokens, after them all), then each sequence's context
    prefix [B, F, D] in front (prepend_context). Returns the encoder's input, its seq_offsets and timestamps, and
    rows [T]: where each token of x went (None: nowhere else, neither is given)."""
    rows = None
    if series_tokens is not None:
        x, seq_offsets, timestamps, rows = merge_series(x, seq_offsets, timestamps, series_tokens,
                                                        batch.series_offsets, batch.series_timestamps, num_targets)
    if context_tokens is not None:
        x, seq_offsets, timestamps, prefixed = prepend_context(x, seq_offsets, timestamps, context_tokens)
        rows = prefixed if rows is None else prefixed[rows]
    return x, seq_offsets, timestamps, rows


def history_input(tokens: torch.Tensor, timestamps: torch.Tensor | None, series: UserSeriesEmbedding | None,
                  changes: tuple[torch.Tensor, torch.Tensor] | None, context: UserContextEmbedding | None,
                  codes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One user's history tokens [L, D] (and timestamps [L]) as M-FALCON's prefill reads them, laid out as the
    forward pass lays out a sequence: its change tokens (changes: codes [S] and times [S]) merged in by time, then
    its context prefix (codes [F]) in front. A model without either refuses it."""
    if series is None:
        if changes is not None:
            raise ValueError("this model reads no user-feature changes")
    else:
        if changes is None:
            raise ValueError("this model reads a user feature's changes as tokens: none were given")
        if timestamps is None:
            raise ValueError("user-feature change tokens need the history's timestamps")
        change_codes, change_times = changes
        offsets = torch.tensor([0, tokens.shape[0]], device=tokens.device)
        change_offsets = torch.tensor([0, change_codes.numel()], device=tokens.device)
        tokens, _, timestamps, _ = merge_series(tokens, offsets, timestamps, series(change_codes), change_offsets,
                                                change_times)
    if context is None:
        if codes is not None:
            raise ValueError("this model reads no user context")
        return tokens, timestamps
    prefix = context(None if codes is None else codes.view(1, -1))[0]  # [F, D]
    if timestamps is not None:
        timestamps = torch.cat([timestamps[:1].expand(prefix.shape[0]), timestamps])
    return torch.cat([prefix.to(tokens.dtype), tokens]), timestamps


class UserSeriesEmbedding(nn.Module):
    """One token per change of a slow-changing user feature (genrec.data.user_series): code c becomes row c,
    scaled like the item embeddings. codes [S] -> [S, D]."""

    def __init__(self, cardinality: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.table = nn.Embedding(cardinality + 1, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(embedding_dim)
        nn.init.trunc_normal_(self.table.weight, std=0.02, a=-0.04, b=0.04)

    def forward(self, codes: torch.Tensor | None) -> torch.Tensor:
        if codes is None:
            raise ValueError("this model reads a user feature's changes as tokens: the batch has none")
        return self.dropout(self.table(codes) * self.scale)


def merge_series(x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor, series_tokens: torch.Tensor,
                 series_offsets: torch.Tensor, series_timestamps: torch.Tensor, num_targets: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merges each sequence's change tokens [S, D] into its tokens x [T, D] by time, a change before an event of
    the same time; with num_targets, each sequence's last num_targets[b] tokens (M-FALCON's candidates) after all
    its changes, whatever their times (the changes are the user's state when the candidates are asked about).
    Returns the encoder's input [T + S, D], its seq_offsets and timestamps, and rows [T]: where each token of x
    went."""
    order_times = timestamps
    if num_targets is not None:
        sequence = sequence_ids(seq_offsets, timestamps.numel())
        from_end = seq_offsets[1:][sequence] - torch.arange(timestamps.numel(), device=timestamps.device)
        order_times = timestamps.masked_fill(from_end <= num_targets[sequence], torch.iinfo(timestamps.dtype).max)
    order, offsets = merge_by_time(series_offsets, series_timestamps, seq_offsets, order_times)
    rows = torch.empty_like(order)
    rows[order] = torch.arange(order.numel(), device=order.device)
    merged_times = torch.cat([series_timestamps, timestamps])[order]
    return torch.cat([series_tokens.to(x.dtype), x])[order], offsets, merged_times, rows[series_tokens.shape[0]:]
