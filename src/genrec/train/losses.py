"""Softmax over l2-normalised embeddings: sampled (the paper's retrieval loss) or over the whole catalog.

Shapes: P predicting positions, D dim, S uniform negatives per position, M in-batch negatives, I items.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from genrec.model.similarity import DotSimilarity, Similarity


def sampled_softmax_loss(user: torch.Tensor, targets: torch.Tensor, item_embeddings, num_items: int,
                         num_negatives: int, temperature: float, generator: torch.Generator,
                         in_batch_negatives: int = 0, similarity: Similarity | None = None,
                         negative_pool: torch.Tensor | None = None, whole_table: bool = True,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the positive against S uniform negatives per position (weighted by `weights` [P]
    where given: rows of weight 0 are padding).

    user: [P, D] l2-normalised; targets: [P] dense item ids (>= 1); item_embeddings(ids) returns
    l2-normalised rows. A negative equal to the positive is masked. Optional in-batch negatives are
    M of the batch's targets shared by all positions, logQ-corrected against uniform sampling so
    popular items are not over-penalised. `similarity` scores a user against an item (default: the
    dot product; see genrec.model.similarity). negative_pool: the ids negatives are drawn from (a stream's
    held items), uniformly; default 1..I. whole_table = False: only look rows up, never read the whole table (one
    sharded across ranks, where every rank must make the same lookups whatever its number of positions).
    """
    similarity = DotSimilarity() if similarity is None else similarity
    num_positions, dim = user.shape
    # Normalising the whole table once and gathering from it is the same math as normalising each
    # gathered row, and cheaper when the catalog has fewer rows than the P * (S + 1) the loss reads.
    # The item-only part of the similarity (for MoL: projections, normalisation, gate) likewise runs
    # once per catalog row rather than once per (position, negative) pair.
    table = item_embeddings() if whole_table and num_items + 1 <= num_positions * (num_negatives + 1) else None
    rows = item_embeddings if table is None else partial(F.embedding, weight=table)
    features = (lambda ids: similarity.item_features(item_embeddings(ids))) if table is None else \
        partial(F.embedding, weight=similarity.item_features(table))
    positives = similarity.score(user, features(targets)).unsqueeze(1)  # [P, 1]
    if negative_pool is None:
        negative_ids = torch.randint(1, num_items + 1, (num_positions, num_negatives),
                                     device=targets.device, generator=generator)
    else:
        negative_ids = negative_pool[torch.randint(0, negative_pool.numel(), (num_positions, num_negatives),
                                                   device=targets.device, generator=generator)]
    if isinstance(similarity, DotSimilarity) and table is not None and num_items + 1 <= num_negatives * dim:
        # small catalog: score all of it with one matmul, then pick; no [P, S, D] tensor
        negatives = (user @ table.T).gather(1, negative_ids)  # [P, S]
    else:
        negatives = similarity.score(user.unsqueeze(1), features(negative_ids))  # [P, S]
    negatives = negatives.masked_fill(negative_ids == targets.unsqueeze(1), float("-inf"))
    logits = [positives, negatives]
    if in_batch_negatives > 0:
        pick = torch.randint(0, targets.shape[0], (in_batch_negatives,), device=targets.device,
                             generator=generator)
        pool = targets[pick]
        counts = torch.bincount(targets, minlength=num_items + 1).to(user.dtype)
        log_q = torch.log(counts[pool] / targets.shape[0]) + math.log(num_items)  # vs uniform q = 1/I
        in_batch = similarity.all(user, rows(pool)) - log_q * temperature
        logits.append(in_batch.masked_fill(pool.unsqueeze(0) == targets.unsqueeze(1), float("-inf")))
    logits = torch.cat(logits, dim=1) / temperature
    zeros = torch.zeros(targets.shape[0], dtype=torch.int64, device=targets.device)
    return cross_entropy(logits.float(), zeros, weights)


def full_softmax_loss(user: torch.Tensor, targets: torch.Tensor, item_embeddings, num_items: int,
                      temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over every item of the catalog (ids 1..I): exact where I is small enough
    that a [P, I] logit matrix is cheaper than gathering S negatives per position. weights: as
    sampled_softmax_loss's (a padding row's target may be 0)."""
    catalog = item_embeddings(torch.arange(1, num_items + 1, device=targets.device))  # [I, D]
    logits = (user @ catalog.T) / temperature
    return cross_entropy(logits.float(), (targets - 1).clamp(min=0), weights)


def cross_entropy(logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean cross-entropy of the rows, or their weighted mean."""
    if weights is None:
        return F.cross_entropy(logits, classes)
    return (F.cross_entropy(logits, classes, reduction="none") * weights).sum() / weights.sum()


def loss_flops(num_positions: int, dim: int, num_items: int, negatives: str, num_negatives: int,
               in_batch_negatives: int) -> float:
    """Forward FLOPs of the logits: 2 * D per (position, scored item) pair."""
    scored = num_items if negatives == "all" else 1 + num_negatives + in_batch_negatives
    return 2.0 * num_positions * scored * dim
