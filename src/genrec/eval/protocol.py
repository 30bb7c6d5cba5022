"""Full-corpus ranking evaluation: score every item, exclude padding (and, as the official
evaluation does, the items in the history the model read), and rank the held-out target.

Shapes: B users per chunk, I items + 1 (padding id 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from genrec.data.batch import SequenceBatch, make_batch
from genrec.data.splits import EvalSplit
from genrec.ops.jagged import jagged_to_padded, last_positions

EVAL_ITEM_CHUNK = 1 << 18  # items scored at a time for a batch of users when a catalogue is larger
COUNTED_COLUMNS = 1 << 24  # at most this many columns at a time: float32 counts 0/1 values exactly up to 2^24


@dataclass
class ItemChunks:
    """A batch's scores, item range by item range: items(lo, hi) -> [B, hi - lo] for item ids lo..hi - 1 (id 0 is
    padding), num_columns = I + 1. For catalogues whose [B, I + 1] score matrix would not fit in memory."""

    items: Callable[[int, int], torch.Tensor]
    num_columns: int
    # a table sharded by rows across ranks: this rank scores ids [lo, hi) only, and combine(values, op) all-reduces
    # what the ranks found (op "max" or "sum"); ranks add up over disjoint ranges. None: one process scores all
    own_columns: tuple[int, int] | None = None
    combine: Callable[[torch.Tensor, str], None] | None = None


Scorer = Callable[[SequenceBatch], "torch.Tensor | ItemChunks"]  # batch -> [B, I + 1] scores, or ItemChunks


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, batch: SequenceBatch | None,
                 exclude_history: bool, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each target among the eligible items (real ids; not in the history when
    `exclude_history`): 1 + #other eligible items scored at least as high. Ties rank pessimistically, so
    a score can only earn credit by beating the items it is compared with: a constant model ranks every
    target last, and the popularity baseline's equal counts do not flatter it. A target that is itself
    excluded (a repeat of a history item) ranks last. Non-finite scores are an error: NaN compares false
    with everything, which would rank the target first. candidates [I + 1] bool: the items that may be
    ranked at all (a stream's held items); a target outside them ranks last, like an excluded one."""
    return chunked_target_ranks(whole_matrix(scores), targets, batch, exclude_history, candidates,
                                chunk_columns=scores.shape[1]).ranks


def whole_matrix(scores: torch.Tensor) -> ItemChunks:
    """A [B, I + 1] score matrix as ItemChunks."""
    return ItemChunks(lambda lo, hi: scores[:, lo:hi], scores.shape[1])


@dataclass
class SplitRanks:
    """Ranks [U] (1-based) of the held-out items (of a split, or [B] of one batch), and nll [U]: each one's negative
    log-likelihood (nats) under the softmax of scores / temperature over the real items (None without a
    temperature)."""

    ranks: torch.Tensor
    nll: torch.Tensor | None = None


def chunked_target_ranks(scores: ItemChunks, targets: torch.Tensor, batch: SequenceBatch | None,
                         exclude_history: bool, candidates: torch.Tensor | None = None,
                         chunk_columns: int = EVAL_ITEM_CHUNK, temperature: float | None = None) -> SplitRanks:
    """target_ranks over item ranges of chunk_columns: with several, every range is scored twice, first for the
    targets' scores, the finiteness check and the likelihood, then to count, so that a target is compared with
    exactly the score it has in its own range's matrix (a score computed apart could differ in the last bit and
    break a tie in its favour). With own_columns, every rank ranks against its own ids and the counts are added up
    (the target's score comes from the rank that holds it). With a temperature (the model's training one), also the
    targets' negative log-likelihood (TargetLikelihood)."""
    first, last = scores.own_columns or (0, scores.num_columns)
    chunk_columns = min(chunk_columns, COUNTED_COLUMNS)
    bounds = [(lo, min(lo + chunk_columns, last)) for lo in range(first, last, chunk_columns)]
    combine = scores.combine or (lambda values, op: None)
    score_range = scores.items
    if len(bounds) == 1:
        whole = scores.items(*bounds[0]).float()
        score_range = lambda lo, hi: whole  # noqa: E731
    rows = torch.arange(targets.shape[0], device=targets.device)
    target_scores = torch.full((targets.shape[0],), float("-inf"), device=targets.device)
    bad = torch.zeros(targets.shape[0], dtype=torch.bool, device=targets.device)
    likelihood = None if temperature is None else TargetLikelihood(targets, temperature)
    for lo, hi in bounds:
        chunk = score_range(lo, hi).float()
        bad |= _non_finite_rows(chunk[:, max(0, 1 - lo):])  # column 0 (padding) is never ranked
        inside = (targets >= lo) & (targets < hi)
        target_scores[inside] = chunk[rows[inside], targets[inside] - lo]
        if likelihood is not None:
            likelihood.add(lo, chunk)
    combine(target_scores, "max")
    bad = _combined_flags(bad, combine)
    if bool(bad.any()):
        raise ValueError(f"non-finite scores for {int(bad.sum())} of {bad.numel()} users (the model's weights or "
                         f"inputs hold NaN or inf); refusing to rank them")
    history = None
    if exclude_history:
        history = jagged_to_padded(batch.item_ids, batch.seq_offsets, batch.max_seq_len)  # padding slots: id 0
    at_least = torch.zeros_like(targets)
    eligible_count = torch.zeros_like(targets)
    target_eligible = torch.zeros_like(bad)
    # Counting goes through float 0/1 masks (exact: see COUNTED_COLUMNS): on a CPU, summing a bool matrix's
    # rows takes ~8x as long as comparing into a float buffer and summing that.
    above = None
    for lo, hi in bounds:
        chunk = score_range(lo, hi).float()
        eligible = torch.ones_like(chunk) if candidates is None else \
            candidates[lo:hi].float().repeat(chunk.shape[0], 1)
        if lo == 0:
            eligible[:, 0] = 0.0
        if history is not None:  # history items of this range out; the others to a spare column, dropped
            width = hi - lo
            local = history - lo
            local = torch.where((local >= 0) & (local < width), local, width)
            eligible = torch.cat([eligible, eligible.new_ones(eligible.shape[0], 1)], dim=1)
            eligible = eligible.scatter_(1, local, 0.0)[:, :width]
        inside = (targets >= lo) & (targets < hi)
        local_targets = (targets - lo).clamp(0, hi - lo - 1)
        target_eligible |= inside & (eligible[rows, local_targets] > 0)
        eligible[rows[inside], local_targets[inside]] = 0.0  # the target is not compared with itself
        if above is None or above.shape != chunk.shape:
            above = torch.empty_like(chunk)
        torch.ge(chunk, target_scores.view(-1, 1), out=above)
        at_least += above.mul_(eligible).sum(dim=1).long()
        eligible_count += eligible.sum(dim=1).long()
    combine(at_least, "sum")
    combine(eligible_count, "sum")
    target_eligible = _combined_flags(target_eligible, combine)
    return SplitRanks(torch.where(target_eligible, at_least + 1, eligible_count + 1),
                      None if likelihood is None else likelihood.nll(combine))


def _non_finite_rows(scores: torch.Tensor) -> torch.Tensor:
    """Rows holding a NaN or an infinity. A row's sum is non-finite when the row is, or (harmlessly) when it
    overflows; only such rows are checked element by element, which on a CPU costs ~30x a sum."""
    suspect = ~torch.isfinite(scores.sum(dim=1))
    if not bool(suspect.any()):
        return suspect
    return suspect.index_put((suspect,), ~torch.isfinite(scores[suspect]).all(dim=1))


def _combined_flags(flags: torch.Tensor, combine: Callable[[torch.Tensor, str], None]) -> torch.Tensor:
    """Per-user flags set on any rank."""
    values = flags.to(torch.int32)
    combine(values, "max")
    return values.bool()


class TargetLikelihood:
    """Each target's negative log-likelihood under the softmax of scores / temperature over the real items (ids
    1..I), gathered range by range: the full-softmax loss on held-out events, which moves with every change of the
    model where top-K metrics move only when an item crosses the cut-off. No history is excluded (training's softmax
    excludes none), so a repeated item keeps its probability; a constant model scores ln I. The log-sum-exp runs
    with a running maximum, and across ranks for a table sharded by rows."""

    def __init__(self, targets: torch.Tensor, temperature: float) -> None:
        self.targets, self.temperature = targets, temperature
        self.rows = torch.arange(targets.shape[0], device=targets.device)
        self.peak = torch.full((targets.shape[0],), float("-inf"), device=targets.device)
        self.total = torch.zeros(targets.shape[0], device=targets.device)
        self.target_logits = torch.full((targets.shape[0],), float("-inf"), device=targets.device)

    def add(self, lo: int, scores: torch.Tensor) -> None:
        """scores [B, hi - lo]: item ids lo..hi - 1, in float32."""
        logits = scores / self.temperature
        if lo == 0:  # column 0 is padding
            logits, lo = logits[:, 1:], 1
        if logits.shape[1] == 0:
            return
        new_peak = torch.maximum(self.peak, logits.max(dim=1).values)
        self.total = self.total * torch.exp(self.peak - new_peak) + torch.exp(logits - new_peak.view(-1, 1)).sum(dim=1)
        self.peak = new_peak
        inside = (self.targets >= lo) & (self.targets < lo + logits.shape[1])
        self.target_logits[inside] = logits[self.rows[inside], self.targets[inside] - lo]

    def nll(self, combine: Callable[[torch.Tensor, str], None]) -> torch.Tensor:
        """[B] nats, once every range (of every rank) was added."""
        peak = self.peak.clone()
        combine(peak, "max")
        total = self.total * torch.exp(self.peak - peak)  # a rank without items (its peak -inf) adds 0
        combine(total, "sum")
        combine(self.target_logits, "max")
        return peak + torch.log(total) - self.target_logits


@torch.no_grad()
def rank_split(scorer: Scorer, split: EvalSplit, max_seq_len: int, batch_size: int,
               device: torch.device, exclude_history: bool = True,
               progress: Callable[[range], Iterable[int]] = iter, temperature: float | None = None) -> SplitRanks:
    """The ranks of every user's held-out item, and with a temperature (the model's training temperature) its
    negative log-likelihood; the model's last history position asks about the target's time (the held-out event's
    timestamp), as in training. progress wraps the batches' starts (a bar)."""
    ranks, nlls = [], []
    num_users = split.histories.num_users
    for start in progress(range(0, num_users, batch_size)):
        users = np.arange(start, min(start + batch_size, num_users))
        query_times = None if split.target_timestamps is None else split.target_timestamps[users]
        batch = make_batch(split.histories, users, max_seq_len, query_times=query_times).to(device)
        targets = torch.from_numpy(split.target_items[users]).to(device)
        scores = scorer(batch)
        chunk_columns = EVAL_ITEM_CHUNK
        if isinstance(scores, torch.Tensor):
            scores, chunk_columns = whole_matrix(scores), scores.shape[1]
        result = chunked_target_ranks(scores, targets, batch, exclude_history, chunk_columns=chunk_columns,
                                      temperature=temperature)  # refuses non-finite scores
        ranks.append(result.ranks.cpu())
        if result.nll is not None:
            nlls.append(result.nll.cpu())
    return SplitRanks(torch.cat(ranks), torch.cat(nlls) if nlls else None)


def model_scorer(model: torch.nn.Module, autocast_dtype: torch.dtype | None = None) -> Scorer:
    """Scores = similarity(user embedding after the last history token, every item embedding), item range by
    item range (ItemChunks). The encoder may run under autocast; the scores never do: rounded to bf16, near
    scores would tie, and ties rank the target below the items it ties with (see target_ranks). A table sharded
    by rows is scored where its rows live: every rank ranks the batch against its own items."""
    table = model.item_table
    sharded = hasattr(table, "own_ids")

    def score(batch: SequenceBatch) -> ItemChunks:
        with torch.autocast(batch.item_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            users = model(batch)[last_positions(batch.seq_offsets)].float()
        def score_range(lo: int, hi: int) -> torch.Tensor:  # the range's rows only: no copy of the whole table
            items = model.item_embeddings(torch.arange(lo, hi, device=users.device), own_rows=sharded).float()
            return model.similarity.all(users, items)
        if not sharded:
            return ItemChunks(score_range, model.num_items + 1)
        return ItemChunks(score_range, model.num_items + 1, table.own_ids, table.combine)
    return score


def popularity_scorer(item_counts: np.ndarray, device: torch.device) -> Scorer:
    """The popularity baseline: every user gets the items ranked by training-set frequency (item_counts [I + 1],
    JaggedEvents.item_counts)."""
    counts = torch.from_numpy(item_counts).float().to(device)
    return lambda batch: ItemChunks(lambda lo, hi: counts[lo:hi].expand(batch.num_sequences, -1), counts.numel())
