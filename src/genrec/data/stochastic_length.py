"""Stochastic Length (paper Sec. 3.3): subsample long training histories so that attention costs
O(N^alpha) per sequence in expectation instead of O(n^2), with N the maximum sequence length.

A sequence of n events is kept whole when n <= N^(alpha/2). A longer one is, with probability
1 - N^alpha / n^2, replaced by N^(alpha/2) of its events drawn uniformly without replacement and kept
in time order; otherwise it is kept whole. alpha = 2 turns it off; the paper uses 1.6-1.7 on long
histories. A cut may instead keep N^(alpha/2) consecutive events from a start drawn uniformly (contiguous): the
same attention work, and every kept event is followed by its true successor, so each target is the next event
as in evaluation, where a uniform draw makes most targets events some steps ahead (on ML-1M no better:
docs/long-sequences.md). Or a uniform cut's kept events may still predict their true successors (successors:
stochastic_length_successors), dropped or not, with each successor's time as their query time. Training only:
evaluation always sees the full (truncated) history. Where only some tokens are predicted (a stream's window
events, after history that is context only), a cut may keep those first and fill the rest of its N^(alpha/2) with
context: the same attention work, fewer targets lost. A cut may also hand each kept event its index in the uncut
history (original_positions), which the input embedding then reads as evaluation does.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from genrec.data.batch import SequenceBatch, successors


def expected_attention_work(lengths: torch.Tensor, max_seq_len: int, alpha: float) -> float:
    """E[sum of kept length^2] over the draws of `stochastic_length`: the causal attention work left, in the
    units of n^2. A cut sequence costs N^alpha, with probability 1 - N^alpha / n^2, so a long one
    costs 2 N^alpha - N^(2 alpha) / n^2 in expectation (paper Table 3's sparsity is 1 - this / sum n^2)."""
    n = lengths.double()
    kept_len = int(max_seq_len ** (alpha / 2))
    kept_work = float(kept_len) ** 2  # the subsample is an integer length: N^alpha rounded down
    keep_whole = torch.clamp(max_seq_len ** alpha / n.clamp(min=1) ** 2, max=1.0)
    work = torch.where(n <= kept_len, n ** 2, keep_whole * n ** 2 + (1 - keep_whole) * kept_work)
    return float(work.sum())


def stochastic_length(batch: SequenceBatch, alpha: float, generator: torch.Generator,
                      contiguous: bool = False, original_positions: bool = False) -> SequenceBatch:
    """A batch with some long sequences subsampled (host tensors; the generator is a CPU one). original_positions:
    each kept token carries its index in the uncut history (SequenceBatch.positions)."""
    keep = stochastic_length_keep(batch, alpha, generator, contiguous=contiguous)
    return batch if keep is None else _cut(batch, keep, original_positions)


def stochastic_length_successors(batch: SequenceBatch, alpha: float, generator: torch.Generator,
                                 original_positions: bool = False) -> tuple[SequenceBatch, torch.Tensor]:
    """A uniform cut (the draws of stochastic_length's) whose kept events still predict their true successors:
    (the batch, targets [T'] each kept token's successor's item id in the whole history, 0 for a sequence's last
    event). Each kept token's query time (token_query_times) is its successor's time, so the time bias asks the
    question evaluation asks; a kept event never sees its dropped successor, which the causal mask keeps out of
    every earlier row. Host tensors; a batch without timestamps has no query times to set. original_positions: see
    stochastic_length."""
    if batch.query_times is not None:
        raise ValueError("a training batch predicts its own events: it has no query times")
    targets = successors(batch.item_ids, batch.seq_offsets)
    keep = stochastic_length_keep(batch, alpha, generator)
    if keep is None:
        return batch, targets
    added = {}
    if batch.timestamps is not None:  # a last event asks about its own time (no successor, no loss)
        added["token_query_times"] = torch.where(targets > 0, successors(batch.timestamps, batch.seq_offsets),
                                                 batch.timestamps)
    return _cut(batch, keep, original_positions, **added), targets[keep]


def _cut(batch: SequenceBatch, keep: torch.Tensor, original_positions: bool, **added: torch.Tensor) -> SequenceBatch:
    """keep_tokens, with the per-token fields `added` [T] set first (and positions, with original_positions)."""
    if original_positions:
        added["positions"] = torch.arange(batch.item_ids.shape[0]) - torch.repeat_interleave(batch.seq_offsets[:-1],
                                                                                              batch.lengths)
    return keep_tokens(batch, keep, **added)


def stochastic_length_keep(batch: SequenceBatch, alpha: float, generator: torch.Generator,
                           prefer: torch.Tensor | None = None, contiguous: bool = False) -> torch.Tensor | None:
    """Which of the batch's tokens Stochastic Length keeps ([T] bool), or None when it keeps them all. prefer [T]
    bool: tokens a cut keeps before any other (drawn uniformly among themselves when they alone overflow it); None:
    every token alike. The generator's draws do not depend on prefer. contiguous: a cut keeps consecutive events
    (not with prefer)."""
    if contiguous and prefer is not None:
        raise ValueError("a contiguous stochastic-length cut keeps no preferred tokens")
    if not 0.0 < alpha <= 2.0:
        raise ValueError(f"stochastic length alpha must be in (0, 2], got {alpha}")
    max_seq_len = batch.max_seq_len
    kept_len = int(max_seq_len ** (alpha / 2))
    lengths = batch.lengths.tolist()
    if max(lengths, default=0) <= kept_len:
        return None
    keep = torch.ones(batch.item_ids.shape[0], dtype=torch.bool)
    for start, length in zip(batch.seq_offsets[:-1].tolist(), lengths):
        cut = length > kept_len and float(torch.rand((), generator=generator)) >= max_seq_len ** alpha / length ** 2
        if cut and contiguous:
            first = start + int(torch.randint(length - kept_len + 1, (), generator=generator))
            keep[start:start + length] = False
            keep[first:first + kept_len] = True
        elif cut:
            order = torch.randperm(length, generator=generator)
            if prefer is not None:  # the preferred tokens first, each group in its random order
                order = order[torch.argsort((~prefer[start + order]).to(torch.int8), stable=True)]
            keep[start:start + length] = False
            keep[start + order[:kept_len]] = True
    return keep


def keep_tokens(batch: SequenceBatch, keep: torch.Tensor, **added: torch.Tensor) -> SequenceBatch:
    """The batch with only the tokens `keep` [T] marks, each sequence's in their order; added: per-token fields [T]
    to set on it (cut the same way) in place of the batch's."""
    sequence = torch.repeat_interleave(torch.arange(batch.lengths.numel()), batch.lengths)
    offsets = torch.zeros(batch.lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(sequence[keep], minlength=batch.lengths.numel()), 0)
    per_token = {f.name: getattr(batch, f.name) for f in fields(batch)  # derived fields are not passed in
                 if f.init and f.name not in ("seq_offsets", "max_seq_len", *SequenceBatch.PER_SEQUENCE)}
    per_token.update(added)
    kept = {name: None if value is None else value[keep] for name, value in per_token.items()}
    return SequenceBatch(seq_offsets=offsets, max_seq_len=batch.max_seq_len, **kept,
                         **{name: getattr(batch, name) for name in SequenceBatch.PER_SEQUENCE})
