"""Full-corpus ranking evaluation: score every item, exclude padding (and, as the official
evaluation does, the items in the history the model read), and rank the held-out target.

Shapes: B users per chunk, I items + 1 (padding id 0).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from genrec.data.batch import SequenceBatch, make_batch
from genrec.data.splits import EvalSplit
from genrec.ops.jagged import jagged_to_padded, last_positions

Scorer = Callable[[SequenceBatch], torch.Tensor]  # batch -> [B, I + 1] scores


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, batch: SequenceBatch,
                 exclude_history: bool) -> torch.Tensor:
    """1-based rank of each target among all real items: 1 + #items scored strictly higher."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    if exclude_history:
        history = jagged_to_padded(batch.item_ids, batch.seq_offsets, batch.max_seq_len)
        scores.scatter_(1, history, float("-inf"))  # padding slots hit column 0, already -inf
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores > target_scores).sum(dim=1) + 1


@torch.no_grad()
def rank_split(scorer: Scorer, split: EvalSplit, max_seq_len: int, batch_size: int,
               device: torch.device, exclude_history: bool = True) -> torch.Tensor:
    """Ranks [U] of every user's held-out item."""
    ranks = []
    num_users = split.histories.num_users
    for start in range(0, num_users, batch_size):
        users = np.arange(start, min(start + batch_size, num_users))
        batch = make_batch(split.histories, users, max_seq_len).to(device)
        targets = torch.from_numpy(split.target_items[users]).to(device)
        ranks.append(target_ranks(scorer(batch), targets, batch, exclude_history).cpu())
    return torch.cat(ranks)


def model_scorer(model: torch.nn.Module, autocast_dtype: torch.dtype | None = None) -> Scorer:
    """Scores = similarity(user embedding after the last history token, every item embedding). The
    encoder may run under autocast; the scores never do: rounded to bf16, near scores would tie, and a
    tie ranks the target above the items it ties with (+2.4% HR@10 on ml-1m-sas in a CPU check)."""
    def score(batch: SequenceBatch) -> torch.Tensor:
        with torch.autocast(batch.item_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            users = model(batch)[last_positions(batch.seq_offsets)]
        return model.similarity.all(users.float(), model.item_embeddings().float())
    return score


def popularity_scorer(train_item_ids: np.ndarray, num_items: int, device: torch.device) -> Scorer:
    """The popularity baseline: every user gets the items ranked by training-set frequency."""
    counts = torch.from_numpy(np.bincount(train_item_ids, minlength=num_items + 1)).float().to(device)
    return lambda batch: counts.expand(batch.num_sequences, -1)
