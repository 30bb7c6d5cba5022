"""Per-event action signals for ranking: binary tasks derived from what the source records.

A rating becomes two ordinal tasks, `liked` (rating >= 4) and `loved` (the top grade, >= 5); every
extra numeric column of an event log (click, like, long_view, share, ...) becomes a task that is on
when the value is > 0.
"""

from __future__ import annotations

import numpy as np

from genrec.data.events import Events

LIKED_THRESHOLD = 4.0
LOVED_THRESHOLD = 5.0


def action_labels(events: Events) -> tuple[list[str], np.ndarray]:
    """(task names, labels [E, A] float32 of 0/1) in the events' order."""
    return labels_from(events.ratings, events.actions, events.source)


def labels_from(ratings: np.ndarray | None, actions: dict[str, np.ndarray],
                source: str) -> tuple[list[str], np.ndarray]:
    """(task names, labels [E, A] float32 of 0/1) of events with these ratings (or None) and action columns."""
    names, columns = [], []
    if ratings is not None:
        names += ["liked", "loved"]
        columns += [ratings >= LIKED_THRESHOLD, ratings >= LOVED_THRESHOLD]
    for name in sorted(actions):
        names.append(name)
        columns.append(actions[name] > 0)
    if not names:
        raise ValueError(f"{source}: ranking needs ratings or action columns; this data has neither")
    return names, np.stack(columns, axis=1).astype(np.float32)
