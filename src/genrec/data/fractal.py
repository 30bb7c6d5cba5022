"""Fractal expansion of an interaction log: a data set many times larger with the source's shape (after Belletti et
al., "Scalable Realistic Recommendation Datasets through Fractal Expansions", arXiv 1901.08910, the method behind
the HSTU paper's ML-3B).

The expansion is a sampled Kronecker product of the source's user x item matrix R with a reduced matrix R~ of m'
rows (user copies) and n' columns (item copies), taken from R itself, which is what makes it fractal:
- R~ is R binarised at n' items and m' users drawn at random (seeded; the users among those who consumed at least
  one of the n' items). Its rows carry real users' breadth of taste, its columns real items' popularity.
- Source user u becomes m' users (a, u), source item i becomes up to n' items (b, i). Each source event (u, i, time,
  rating, actions) becomes m' events, one per copy a: ((a, u), (b, i)) with b drawn uniformly from row a's items
  (the columns where R~[a] is 1), the time, rating and actions kept. In expectation the expanded matrix is
  R (x) P, P being R~ with rows normalised: a Kronecker product, whose singular values are the products of R's and
  P's and whose user activity and item popularity are products of fat-tailed ones.
- Each copy's sequence is its source user's sequence, in the same order at the same times, with each item moved to
  one of the copy's item copies: the source's sequential structure survives, and the copy's own items are a
  taste the model can learn from its history.
- Ids: user (a, u) is a * (max user id + 1) + u, item (b, i) is b * (max item id + 1) + i, so `id % (max + 1)`
  gives the source id back; copy 0 of a user or item keeps its source id.

Events: m' times the source's. Items: the distinct (b, i) drawn, at most n' times the source's (an item copy b whose
column in R~ is empty, or a rare pair, never appears; `genrec prepare` reports the count). Not modelled: new users
or items over time beyond the source's own, differences in timing between a user's copies.

Deterministic: copy a's draws come from its own generator, seeded by (seed, a), so the chunks (one per user copy)
are the same on every call and in any order, as `genrec.data.event_store.prepare_store` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from genrec.data.event_store import Chunk
from genrec.data.events import Events


@dataclass(frozen=True)
class FractalSpec:
    user_copies: int  # m': rows of the reduced matrix, each source user's copies
    item_copies: int  # n': columns of the reduced matrix, each source item's copies at most
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "FractalSpec":
        """'USERSxITEMS', e.g. '100x3000'."""
        try:
            users, items = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"an expansion is USER_COPIESxITEM_COPIES (e.g. 100x3000), got {text!r}") from None
        return cls(users, items, seed)


def reduced_matrix(events: Events, spec: FractalSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R~ [m', n'] bool: the source's interactions at spec.user_copies users and spec.item_copies items drawn at
    random (the users among those with an interaction at the chosen items); and those users' and items' ids."""
    items = np.unique(events.item_ids)
    if not 1 <= spec.item_copies <= items.size:
        raise ValueError(f"{events.source}: item copies must be 1..{items.size} (the source's items), "
                         f"got {spec.item_copies}")
    rng = np.random.default_rng([spec.seed, 0x5EED])
    chosen_items = np.sort(rng.choice(items, spec.item_copies, replace=False))
    at_chosen = np.isin(events.item_ids, chosen_items)
    eligible = np.unique(events.user_ids[at_chosen])
    if not 1 <= spec.user_copies <= eligible.size:
        raise ValueError(f"{events.source}: user copies must be 1..{eligible.size} (the source's users with an "
                         f"interaction at the {spec.item_copies} chosen items), got {spec.user_copies}")
    chosen_users = rng.choice(eligible, spec.user_copies, replace=False)
    rows = np.full(int(events.user_ids.max()) + 1, -1, np.int64)
    rows[chosen_users] = np.arange(spec.user_copies)
    row = rows[events.user_ids[at_chosen]]
    kept = row >= 0
    matrix = np.zeros((spec.user_copies, spec.item_copies), dtype=bool)
    matrix[row[kept], np.searchsorted(chosen_items, events.item_ids[at_chosen][kept])] = True
    return matrix, chosen_users, chosen_items


def expansion_chunks(events: Events, spec: FractalSpec) -> Callable[[], Iterator[Chunk]]:
    """The expanded events as prepare_store's chunks: one per user copy, the source's events in its order."""
    if len(events.user_ids) == 0:
        raise ValueError(f"{events.source}: no events to expand")
    if events.user_ids.min() < 0 or events.item_ids.min() < 0:
        raise ValueError(f"{events.source}: fractal expansion needs non-negative user and item ids")
    matrix, _, _ = reduced_matrix(events, spec)
    user_stride, item_stride = int(events.user_ids.max()) + 1, int(events.item_ids.max()) + 1
    users, items = events.user_ids.astype(np.int64), events.item_ids.astype(np.int64)
    kept = {"timestamp": events.timestamps, "rating": events.ratings, **events.actions}
    kept = {name: values if name == "timestamp" else values.astype(np.float32)
            for name, values in kept.items() if values is not None}
    if "timestamp" in kept:
        kept["timestamp"] = kept["timestamp"].astype(np.int64)

    def chunks() -> Iterator[Chunk]:
        for copy in range(spec.user_copies):
            columns = np.flatnonzero(matrix[copy])
            draws = np.random.default_rng([spec.seed, copy]).integers(columns.size, size=users.size)
            yield {"user_id": copy * user_stride + users, "item_id": columns[draws] * item_stride + items, **kept}

    return chunks
