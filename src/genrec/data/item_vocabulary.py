"""A growing item vocabulary for streams: source item ids are given rows of a fixed-size embedding table as
they first arrive, and rows of items unseen for a while are freed for newcomers.

Row 0 is padding and row 1 is the out-of-vocabulary row: every id the table does not hold (not yet
admitted, or evicted) reads row 1's embedding, which is trained like any other but never recommended or
ranked. Rows 2..capacity+1 hold items. Eviction frees a row when its item has not been seen for
`evict_after` seconds (0: never), and, when an admission finds the table full, the rows seen least recently
(an item admitted in the same call is never evicted by it). A freed row's embedding is re-initialised by its
next owner (`admit` returns the rows it handed out).

`sources[row]` is the row's source id, or -1 for padding, the out-of-vocabulary row and free rows; it and
`last_seen` are the whole state (saved in checkpoints). Lookups search the held ids, sorted once after each change
(a stream's batches look up far more often than its windows admit).
"""

from __future__ import annotations

import numpy as np

PADDING_ROW, UNKNOWN_ROW, FIRST_ITEM_ROW = 0, 1, 2
NO_ITEM = -1


class ItemVocabulary:
    def __init__(self, capacity: int, evict_after: int = 0) -> None:
        """capacity: item rows (the embedding table has capacity + 2); evict_after: seconds (0 = never)."""
        if capacity < 1:
            raise ValueError(f"item capacity must be positive, got {capacity}")
        if evict_after < 0:
            raise ValueError(f"evict_after must be >= 0 seconds, got {evict_after}")
        self.capacity, self.evict_after = capacity, evict_after
        self.sources = np.full(capacity + FIRST_ITEM_ROW, NO_ITEM, dtype=np.int64)
        self.last_seen = np.zeros(capacity + FIRST_ITEM_ROW, dtype=np.int64)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # held source ids in order, and their rows
        self.evicted = 0  # rows freed so far (expired or pushed out)

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table this vocabulary indexes (padding and unknown included)."""
        return self.sources.size

    def lookup(self, source_ids: np.ndarray) -> np.ndarray:
        """Rows of these source ids; UNKNOWN_ROW for ids the table does not hold."""
        if self._sorted is None:
            held = np.flatnonzero(self.sources >= 0)
            order = np.argsort(self.sources[held])
            self._sorted = self.sources[held][order], held[order]
        ids, rows = self._sorted
        source_ids = np.asarray(source_ids, dtype=np.int64)
        if ids.size == 0:
            return np.full(source_ids.shape, UNKNOWN_ROW, dtype=np.int64)
        at = np.minimum(np.searchsorted(ids, source_ids), ids.size - 1)
        return np.where(ids[at] == source_ids, rows[at], UNKNOWN_ROW)

    def admit(self, source_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Records that these items were seen at these times: unknown ids get rows (freeing rows as the
        eviction rules say) and every seen row's last_seen moves up. Returns the rows handed to new ids."""
        if np.any(source_ids < 0):
            raise ValueError("item ids must be >= 0 (negative ids are reserved for rows that hold no item)")
        unique = np.unique(source_ids)
        latest = np.zeros(unique.size, np.int64)
        np.maximum.at(latest, np.searchsorted(unique, source_ids), timestamps)
        now = int(timestamps.max()) if timestamps.size else 0
        if self.evict_after:
            self._free(np.flatnonzero((self.sources >= 0) & (self.last_seen < now - self.evict_after)))
        rows = self.lookup(unique)
        known = rows != UNKNOWN_ROW
        self.last_seen[rows[known]] = latest[known]
        new_ids, new_latest = unique[~known], latest[~known]
        free = np.flatnonzero(self.sources[FIRST_ITEM_ROW:] == NO_ITEM) + FIRST_ITEM_ROW
        shortfall = new_ids.size - free.size
        if shortfall > 0:
            if new_ids.size > self.capacity - int(known.sum()):
                raise ValueError(f"item capacity {self.capacity} is too small: one window brings "
                                 f"{unique.size} distinct items (raise stream.item_capacity)")
            held = np.flatnonzero(self.sources >= 0)
            held = held[~np.isin(self.sources[held], unique[known])]  # not the items of this very call
            self._free(held[np.argsort(self.last_seen[held], kind="stable")[:shortfall]])
            free = np.flatnonzero(self.sources[FIRST_ITEM_ROW:] == NO_ITEM) + FIRST_ITEM_ROW
        given = free[:new_ids.size]
        self.sources[given], self.last_seen[given] = new_ids, new_latest
        self._sorted = None
        return given

    def _free(self, rows: np.ndarray) -> None:
        self.sources[rows] = NO_ITEM
        self._sorted = None
        self.evicted += rows.size

    def held_rows(self) -> np.ndarray:
        """Boolean [num_rows]: the rows that hold an item now (the candidates of a ranking)."""
        return self.sources >= 0

    def state(self) -> dict[str, np.ndarray | int]:
        return {"sources": self.sources.copy(), "last_seen": self.last_seen.copy(), "evicted": self.evicted}

    @classmethod
    def from_state(cls, state: dict, evict_after: int) -> "ItemVocabulary":
        sources = np.asarray(state["sources"], dtype=np.int64)
        vocabulary = cls(sources.size - FIRST_ITEM_ROW, evict_after)
        vocabulary.sources, vocabulary.last_seen = sources.copy(), np.asarray(state["last_seen"], np.int64).copy()
        vocabulary.evicted = int(state["evicted"])
        return vocabulary
