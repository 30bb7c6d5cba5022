"""Full-corpus ranking evaluation: score every item, exclude padding (and, as the official
evaluation does, the items in the history the model read), and rank the held-out target.

Shapes: B users per chunk, I items + 1 (padding id 0).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from genrec.data.batch import SequenceBatch, make_batch
from genrec.data.splits import EvalSplit
from genrec.ops.jagged import jagged_to_padded, last_positions

Scorer = Callable[[SequenceBatch], torch.Tensor]  # batch -> [B, I + 1] scores


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, batch: SequenceBatch | None,
                 exclude_history: bool, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each target among the eligible items (real ids; not in the history when
    `exclude_history`): 1 + #other eligible items scored at least as high. Ties rank pessimistically, so
    a score can only earn credit by beating the items it is compared with: a constant model ranks every
    target last, and the popularity baseline's equal counts do not flatter it. A target that is itself
    excluded (a repeat of a history item) ranks last. Non-finite scores are an error: NaN compares false
    with everything, which would rank the target first. candidates [I + 1] bool: the items that may be
    ranked at all (a stream's held items); a target outside them ranks last, like an excluded one."""
    scores = scores.float()
    eligible = torch.ones_like(scores, dtype=torch.bool) if candidates is None else \
        candidates.view(1, -1).expand_as(scores).clone()
    eligible[:, 0] = False
    if exclude_history:
        history = jagged_to_padded(batch.item_ids, batch.seq_offsets, batch.max_seq_len)
        eligible.scatter_(1, history, False)  # padding slots hit column 0, already out
    bad = ~torch.isfinite(scores[:, 1:]).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"non-finite scores for {int(bad.sum())} of {bad.numel()} users (the model's weights or "
                         f"inputs hold NaN or inf); refusing to rank them")
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_eligible = eligible[rows, targets]
    eligible[rows, targets] = False  # the target is not compared with itself
    target_scores = scores[rows, targets].view(-1, 1)
    at_least = ((scores >= target_scores) & eligible).sum(dim=1)
    return torch.where(target_eligible, at_least + 1, eligible.sum(dim=1) + 1)


@torch.no_grad()
def rank_split(scorer: Scorer, split: EvalSplit, max_seq_len: int, batch_size: int,
               device: torch.device, exclude_history: bool = True,
               progress: Callable[[range], Iterable[int]] = iter) -> torch.Tensor:
    """Ranks [U] of every user's held-out item; the model's last history position asks about the target's
    time (the held-out event's timestamp), as in training. progress wraps the batches' starts (a bar)."""
    ranks = []
    num_users = split.histories.num_users
    for start in progress(range(0, num_users, batch_size)):
        users = np.arange(start, min(start + batch_size, num_users))
        query_times = None if split.target_timestamps is None else split.target_timestamps[users]
        batch = make_batch(split.histories, users, max_seq_len, query_times=query_times).to(device)
        targets = torch.from_numpy(split.target_items[users]).to(device)
        ranks.append(target_ranks(scorer(batch), targets, batch, exclude_history).cpu())
    return torch.cat(ranks)


def model_scorer(model: torch.nn.Module, autocast_dtype: torch.dtype | None = None) -> Scorer:
    """Scores = similarity(user embedding after the last history token, every item embedding). The
    encoder may run under autocast; the scores never do: rounded to bf16, near scores would tie, and ties rank
    the target below the items it ties with (see target_ranks)."""
    def score(batch: SequenceBatch) -> torch.Tensor:
        with torch.autocast(batch.item_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            users = model(batch)[last_positions(batch.seq_offsets)]
        return model.similarity.all(users.float(), model.item_embeddings().float())
    return score


def popularity_scorer(item_counts: np.ndarray, device: torch.device) -> Scorer:
    """The popularity baseline: every user gets the items ranked by training-set frequency (item_counts [I + 1],
    JaggedEvents.item_counts)."""
    counts = torch.from_numpy(item_counts).float().to(device)
    return lambda batch: counts.expand(batch.num_sequences, -1)
