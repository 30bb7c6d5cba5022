"""A seeded, vectorised synthetic stream of interactions in the setting the paper built HSTU for
(Sec. 4.1.1 / Table 2): the catalogue grows every day, items lose their audience as they age, users keep
some interests and drift in others, and every event carries a time and several action signals.

What it models, day by day (one day = 86,400 s of timestamps):
- Items arrive as in a Chinese restaurant process over time: `initial_items` exist at the start and a
  day brings Poisson(`new_items_per_day`) more. Each item belongs to one of `num_topics` topics and has a
  quality drawn from a lognormal (sigma `quality_sigma`).
- An item's weight on a day is (quality + `rich_get_richer` x its consumptions so far) x
  2^(-age / `half_life_days`): popular items attract more (the CRP's rich-get-richer), and every item fades.
- Users (Zipf activity, exponent `activity_exponent`) hold a persistent topic mixture (Dirichlet with
  concentration `interest_concentration`) and a drifting one, redrawn on average every
  `drift_days` days; an event's topic comes from the persistent mixture with probability `persistence`,
  else from the drifting one, and its item from that topic's items alive that day, by weight.
- Self-excitation (off at the default `excitation` = 0), as in a Hawkes process: each user keeps per-topic counts of
  its own earlier events, decayed by half every `excitation_half_life_days` (whole days: a day's events excite from
  the next day on). With R the user's total decayed count, an event repeats a recent topic, chosen in proportion to
  those counts, with probability excitation x R / (1 + excitation x R), else draws its topic as above. How many
  events a user had lately (an intensity, not a proportion) and how long ago then decide what comes next.
- Actions, per event: `like` (probability rising with the user's interest in the item's topic and with the
  item's quality) and `long_view` (likelier after a like): the tasks of `--task ranking`.
- A slow-changing user feature, the topic a user follows: the largest topic of the drifting mixture, set at the
  stream's start and changed at the start of each day the mixture is redrawn (Events.user_changes,
  "followed_topic"; sequentialized by data.user_series = "followed_topics"). It costs no random draws: the
  events are the same with it or without.
- Item content: each item's topic (Events.item_features; data.item_features = "topics").
What it does not model: sessions within a day, repeat consumption being special, item content beyond a
topic, user attributes other than the followed topic, and feedback from a recommender into what users see.

Speed: 2M events in 2.9 s on one core at the other defaults (~40M events a minute; measured by hand on the
2-core development machine, no benchmark script yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.events import Events
from genrec.data.item_features import ItemFeatures
from genrec.data.user_series import UserChanges

DAY = 86_400
START = 1_600_000_000  # the stream's first second (2020-09-13)


@dataclass(frozen=True)
class StreamSpec:
    num_users: int = 20_000
    num_events: int = 1_000_000
    num_days: int = 60
    initial_items: int = 2_000
    new_items_per_day: float = 200.0
    num_topics: int = 50
    quality_sigma: float = 1.0
    rich_get_richer: float = 0.05
    half_life_days: float = 7.0
    activity_exponent: float = 1.1
    interest_concentration: float = 0.1
    persistence: float = 0.7
    drift_days: float = 14.0
    excitation: float = 0.0
    excitation_half_life_days: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("num_users", "num_events", "num_days", "initial_items", "num_topics", "half_life_days",
                    "drift_days", "interest_concentration", "activity_exponent", "excitation_half_life_days")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"synthetic-stream: {name} must be positive, got {getattr(self, name)}")
        if min(self.new_items_per_day, self.quality_sigma, self.rich_get_richer, self.excitation) < 0:
            raise ValueError("synthetic-stream: new_items_per_day, quality_sigma, rich_get_richer and excitation "
                             "must be >= 0")
        if not 0.0 <= self.persistence <= 1.0:
            raise ValueError(f"synthetic-stream: persistence must be in [0, 1], got {self.persistence}")


SIZED_BY_CONFIG = ("num_users", "num_events", "initial_items", "seed")  # data.synthetic_users / _items / _seed


def stream_spec(num_users: int, num_items: int, seed: int, overrides: str = "") -> StreamSpec:
    """The stream of `--dataset synthetic-stream`: num_users users with 40 events each on average, num_items items at
    the start; `overrides` (data.synthetic_stream) sets other fields, as "name=value,name=value"."""
    values = {"num_users": num_users, "num_events": 40 * num_users, "initial_items": num_items, "seed": seed}
    fields = {name: type(getattr(StreamSpec, name)) for name in StreamSpec.__dataclass_fields__}
    for assignment in filter(None, (part.strip() for part in overrides.split(","))):
        name, _, value = assignment.partition("=")
        name = name.strip()
        if name not in fields or name in SIZED_BY_CONFIG:
            settable = ", ".join(field for field in fields if field not in SIZED_BY_CONFIG)
            raise ValueError(f"data.synthetic_stream: {name!r} is not a setting of the stream (settable: {settable}; "
                             "its size and seed come from data.synthetic_users, synthetic_items, synthetic_seed)")
        try:
            values[name] = fields[name](value)
        except ValueError:
            kind = fields[name].__name__
            raise ValueError(f"data.synthetic_stream: {name} = {value!r} is not a valid {kind}") from None
    return StreamSpec(**values)


def generate_stream(spec: StreamSpec = StreamSpec()) -> Events:
    """The stream's events in time order (users 1..num_users, items 1..K in order of arrival)."""
    rng = np.random.default_rng(spec.seed)
    # items: birth day, topic, quality
    arrivals = rng.poisson(spec.new_items_per_day, spec.num_days)
    birth_day = np.concatenate([np.zeros(spec.initial_items, np.int64),
                                np.repeat(np.arange(spec.num_days), arrivals)])
    num_items = birth_day.size
    topic = rng.integers(0, spec.num_topics, num_items)
    quality = rng.lognormal(0.0, spec.quality_sigma, num_items)
    consumed = np.zeros(num_items)
    # users: activity, persistent and drifting interests (the drifting one redrawn at each user's change days)
    activity = 1.0 / np.arange(1, spec.num_users + 1) ** spec.activity_exponent
    activity = rng.permutation(activity / activity.sum())
    persistent = _topic_choice_tables(rng, spec.num_users, spec.num_topics, spec.interest_concentration)
    # events: day, second, user
    day = np.sort(rng.integers(0, spec.num_days, spec.num_events))
    seconds = day * DAY + rng.integers(0, DAY, spec.num_events)
    user = rng.choice(spec.num_users, spec.num_events, p=activity)
    event_topic = np.empty(spec.num_events, np.int64)
    item = np.empty(spec.num_events, np.int64)
    interest = np.empty(spec.num_events)
    day_starts = np.searchsorted(day, np.arange(spec.num_days + 1))
    by_topic = _TopicIndex(topic, spec.num_topics)
    drifting = _topic_choice_tables(rng, spec.num_users, spec.num_topics, spec.interest_concentration)
    followed = [(np.arange(spec.num_users), np.zeros(spec.num_users, np.int64), _largest_topic(drifting))]
    recent = np.zeros((spec.num_users, spec.num_topics)) if spec.excitation > 0 else None  # decayed topic counts
    for d in range(spec.num_days):
        lo, hi = day_starts[d], day_starts[d + 1]
        if recent is not None and d > 0:
            recent *= 0.5 ** (1.0 / spec.excitation_half_life_days)
        if hi == lo:
            continue
        redraw = rng.random(spec.num_users) < 1.0 / spec.drift_days
        if redraw.any():
            drifting[redraw] = _topic_choice_tables(rng, int(redraw.sum()), spec.num_topics,
                                                    spec.interest_concentration)
            changed = np.flatnonzero(redraw)
            followed.append((changed, np.full(changed.size, d * DAY), _largest_topic(drifting[changed])))
        users_today = user[lo:hi]
        keep = rng.random(hi - lo) < spec.persistence
        tables = np.where(keep[:, None], persistent[users_today], drifting[users_today])  # cumulative [n, T]
        if recent is not None:
            tables = _excited(rng, tables, recent[users_today], spec.excitation)
        event_topic[lo:hi] = _sample_rows(rng, tables)
        interest[lo:hi] = _row_mass(tables, event_topic[lo:hi])
        alive = birth_day <= d
        weight = (quality + spec.rich_get_richer * consumed) * np.exp2(-(d - birth_day) / spec.half_life_days)
        weight = np.where(alive, weight, 0.0)
        item[lo:hi] = by_topic.sample(rng, event_topic[lo:hi], weight)
        consumed += np.bincount(item[lo:hi], minlength=num_items)
        if recent is not None:
            recent += np.bincount(users_today * spec.num_topics + event_topic[lo:hi],
                                  minlength=recent.size).reshape(recent.shape)
    # actions: a like is likelier where the user cares about the topic and the item is good
    lift = np.maximum(interest * spec.num_topics, 1e-6)  # the topic's share against a uniform interest
    like_logit = 0.8 * np.log(lift) + 0.5 * np.log(quality[item]) - 1.5
    like = rng.random(spec.num_events) < 1.0 / (1.0 + np.exp(-like_logit))
    long_view = rng.random(spec.num_events) < np.where(like, 0.6, 0.15)
    order = np.lexsort((seconds, user))  # by user, then time: the layout readers produce
    actions = {"like": like.astype(np.float32), "long_view": long_view.astype(np.float32)}
    changes_user, changes_second, changes_topic = (np.concatenate(column) for column in zip(*followed))
    return Events((user + 1)[order], (item + 1)[order], timestamps=(START + seconds)[order],
                  actions={name: values[order] for name, values in actions.items()},
                  source=f"synthetic-stream(seed={spec.seed}, events={spec.num_events})",
                  user_changes=UserChanges(changes_user + 1, START + changes_second, changes_topic + 1,
                                           "followed_topic", tuple(str(topic) for topic in range(spec.num_topics))),
                  item_features=ItemFeatures(np.arange(1, num_items + 1), (topic + 1)[:, None],
                                             np.ones((num_items, 1), np.float32), ("topic",), spec.num_topics))


def _excited(rng: np.random.Generator, tables: np.ndarray, counts: np.ndarray, excitation: float) -> np.ndarray:
    """Each event's topic table [n, T] (cumulative), replaced by its user's recent topic counts [n, T]
    (normalised) with probability excitation x R / (1 + excitation x R), R the counts' total."""
    total = counts.sum(axis=1)
    excited = rng.random(total.size) < excitation * total / (1.0 + excitation * total)
    tables = tables.copy()
    tables[excited] = np.cumsum(counts[excited], axis=1) / total[excited, None]
    return tables


def _largest_topic(cumulative: np.ndarray) -> np.ndarray:
    """Each row's most likely topic, out of cumulative distributions [n, T]."""
    return np.argmax(np.diff(cumulative, axis=1, prepend=0.0), axis=1)


def _topic_choice_tables(rng: np.random.Generator, rows: int, num_topics: int, concentration: float) -> np.ndarray:
    """Cumulative Dirichlet mixtures over topics, one per row: [rows, T], each row ending at 1."""
    mixture = rng.dirichlet(np.full(num_topics, concentration), rows)
    return np.cumsum(mixture, axis=1)


def _sample_rows(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """One index per row of cumulative distributions [n, T]."""
    draws = rng.random((cumulative.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=1), cumulative.shape[1] - 1)


def _row_mass(cumulative: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The probability mass of entry `index` in each row of cumulative distributions."""
    rows = np.arange(cumulative.shape[0])
    upper = cumulative[rows, index]
    lower = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0.0)
    return upper - lower


class _TopicIndex:
    """Items sorted by topic, with each topic's span: built once, as topics never change."""

    def __init__(self, item_topic: np.ndarray, num_topics: int) -> None:
        self.order = np.argsort(item_topic, kind="stable")
        self.ends = np.searchsorted(item_topic[self.order], np.arange(num_topics), side="right")
        self.starts = np.concatenate([[0], self.ends[:-1]])

    def sample(self, rng: np.random.Generator, event_topic: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """For each event, an item of its topic drawn by weight (all topics at once: one cumulative sum over the
        sorted items, each event's draw offset into its topic's span). A topic with no live item falls back to
        the whole catalogue."""
        starts, ends = self.starts, self.ends
        cumulative = np.cumsum(weight[self.order])
        base = np.where(starts > 0, cumulative[np.maximum(starts - 1, 0)], 0.0)
        span = np.where(ends > starts, cumulative[np.maximum(ends - 1, 0)], 0.0) - base
        empty = span[event_topic] <= 0
        low = np.where(empty, 0.0, base[event_topic])
        width = np.where(empty, cumulative[-1], span[event_topic])
        picks = np.searchsorted(cumulative, low + rng.random(event_topic.size) * width, side="right")
        return self.order[np.minimum(picks, self.order.size - 1)]
