"""Jagged batches padded to a few fixed shapes, so that a compiled training step captured in CUDA graphs
(train.compile = graphs) replays instead of re-capturing for every batch's token count.

A batch of B <= max_sequences sequences and T tokens becomes one of exactly `num_sequences` sequences and
bucket(T) tokens: padding sequences follow the real ones (item id 0, time 0, no labels, no changes, context 0), each
of 1 to max_seq_len tokens, so every real token keeps its row and the model treats the padding as users of their
own (attention never crosses sequences). Token counts round up to 8 buckets per power of two (at most 12.5%
padding), so a run meets a few dozen shapes at most. Read the real rows' outputs only: [:T] of every per-token
output."""

from __future__ import annotations

import math

import torch

from genrec.data.batch import SequenceBatch

BUCKETS_PER_OCTAVE = 8


def bucket_tokens(num_tokens: int) -> int:
    """The bucket a token count rounds up to: a multiple of 2^(floor(log2 T) - 3), the next at most 12.5% above."""
    step = 2 ** max(0, math.floor(math.log2(max(num_tokens, 1))) - int(math.log2(BUCKETS_PER_OCTAVE)))
    return -(-num_tokens // step) * step


def padded_sequences(max_sequences: int, max_seq_len: int) -> int:
    """How many sequences every padded batch has: room, for any batch of up to max_sequences sequences of up to
    max_seq_len tokens, to spread its padding over sequences of 1 to max_seq_len tokens."""
    if max_seq_len < 2:
        raise ValueError("padded batches need max_seq_len >= 2")
    largest_step = bucket_tokens(max_sequences * max_seq_len) // BUCKETS_PER_OCTAVE
    return max_sequences + math.ceil(2 * largest_step / (max_seq_len - 1)) + 1


def pad_to_bucket(batch: SequenceBatch, num_sequences: int) -> SequenceBatch:
    """`batch` followed by padding sequences: num_sequences sequences in all, bucket_tokens(T + their count)
    tokens (see the module docstring)."""
    real_tokens, padding = batch.item_ids.shape[0], num_sequences - batch.num_sequences
    if padding < 1:
        raise ValueError(f"a batch of {batch.num_sequences} sequences does not fit {num_sequences} with padding")
    extra = bucket_tokens(real_tokens + padding) - real_tokens
    lengths = torch.full((padding,), extra // padding, dtype=torch.int64)
    lengths[:extra % padding] += 1
    if int(lengths.max()) > batch.max_seq_len:
        raise ValueError(f"{extra} padding tokens do not fit {padding} sequences of at most {batch.max_seq_len}; "
                         "the batch is larger than padded_sequences was told")
    offsets = torch.cat([batch.seq_offsets, batch.seq_offsets[-1] + torch.cumsum(lengths, 0)])

    def extended(values: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        return None if values is None else torch.cat([values, values.new_zeros(rows, *values.shape[1:])])

    series = {}
    if batch.series_offsets is not None:  # no changes for the padding
        series = {"series_codes": batch.series_codes, "series_timestamps": batch.series_timestamps,
                  "series_offsets": torch.cat([batch.series_offsets, batch.series_offsets[-1:].expand(padding)])}
    return SequenceBatch(extended(batch.item_ids, extra), offsets, batch.max_seq_len,
                         timestamps=extended(batch.timestamps, extra), ratings=extended(batch.ratings, extra),
                         labels=extended(batch.labels, extra), context=extended(batch.context, padding),
                         query_times=extended(batch.query_times, padding),
                         token_query_times=extended(batch.token_query_times, extra),
                         positions=extended(batch.positions, extra), **series)
