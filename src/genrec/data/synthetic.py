"""Seeded synthetic interaction logs with learnable sequential structure (the embedded default).

Items fall into groups; inside a group each item has a fixed successor. A user likes a few
groups and mostly walks successor chains there, sometimes jumps inside a liked group, and
rarely clicks a globally popular item. A sequential model can learn the chains; popularity
cannot, which makes the default run a meaningful check that training works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.events import Events


@dataclass(frozen=True)
class SyntheticSpec:
    num_users: int = 2000
    num_items: int = 1000
    num_groups: int = 20
    groups_per_user: int = 2
    min_length: int = 20
    max_length: int = 60
    follow_chain: float = 0.75
    jump_in_group: float = 0.2  # the rest of the probability mass goes to popular items
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_items < self.num_groups or self.num_groups < self.groups_per_user:
            raise ValueError("synthetic: need num_items >= num_groups >= groups_per_user")
        if not 2 <= self.min_length <= self.max_length:
            raise ValueError("synthetic: need 2 <= min_length <= max_length")
        if self.follow_chain + self.jump_in_group > 1:
            raise ValueError("synthetic: follow_chain + jump_in_group must be <= 1")


def generate_events(spec: SyntheticSpec = SyntheticSpec()) -> Events:
    rng = np.random.default_rng(spec.seed)
    items = rng.permutation(spec.num_items) + 1
    groups = np.array_split(items, spec.num_groups)
    successor = {}
    for group in groups:
        for a, b in zip(group, np.roll(group, -1)):
            successor[int(a)] = int(b)
    popularity = 1.0 / np.arange(1, spec.num_items + 1) ** 1.1
    popularity /= popularity.sum()
    users, seq_items, times, ratings = [], [], [], []
    for user in range(1, spec.num_users + 1):
        liked = rng.choice(spec.num_groups, spec.groups_per_user, replace=False)
        liked_items = np.concatenate([groups[g] for g in liked])
        length = int(rng.integers(spec.min_length, spec.max_length + 1))
        current = int(rng.choice(liked_items))
        seen = {current}
        sequence = [current]
        while len(sequence) < length:
            draw = rng.random()
            if draw < spec.follow_chain:
                nxt = successor[current]
            elif draw < spec.follow_chain + spec.jump_in_group:
                nxt = int(rng.choice(liked_items))
            else:
                nxt = int(rng.choice(items, p=popularity))
            if nxt in seen:  # users rarely re-consume: walk on instead of repeating
                candidates = [i for i in liked_items if int(i) not in seen]
                if not candidates:
                    break
                nxt = int(rng.choice(candidates))
            seen.add(nxt)
            sequence.append(nxt)
            current = nxt
        gaps = rng.exponential(3600.0, size=len(sequence)).astype(np.int64) + 1
        liked_set = set(int(i) for i in liked_items)
        users.extend([user] * len(sequence))
        seq_items.extend(sequence)
        times.extend((1_000_000_000 + np.cumsum(gaps)).tolist())
        ratings.extend(float(rng.integers(4, 6) if i in liked_set else rng.integers(1, 4)) for i in sequence)
    return Events(np.asarray(users, np.int64), np.asarray(seq_items, np.int64),
                  timestamps=np.asarray(times, np.int64), ratings=np.asarray(ratings, np.float32),
                  source=f"synthetic(seed={spec.seed})")
