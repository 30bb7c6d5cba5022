"""A request's user features and feature changes as the codes its run was trained with. Training keeps the values
behind the codes in its checkpoint (`input_values` of the trainer state), so serving needs no data files.

Rules: a request may leave a user's features out (the user is unknown, as a training user without a row in the
features file: all codes 0), but features it gives must be all of them, with values training saw. Changes are
(timestamp, value) pairs of the sequentialized feature; a batch takes, as training does, the state at the first
history event and the changes up to the query time, the latest max_series_len. B: histories of the request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from genrec.data.user_series import UserChanges, UserSeries

Features = Mapping[str, str | int]
Changes = Sequence[tuple[int, str | int]]


class UserInputs:
    def __init__(self, input_values: dict, max_series_len: int) -> None:
        """input_values: {"user_features": {name: [value, ...]}, "user_series": [value, ...]}, each when used."""
        self.feature_values: dict[str, list[str]] | None = input_values.get("user_features")
        self.series_values: list[str] | None = input_values.get("user_series")
        self.max_series_len = max_series_len
        self._feature_codes = {name: _codes(values) for name, values in (self.feature_values or {}).items()}
        self._series_codes = _codes(self.series_values or [])

    @property
    def context_cardinalities(self) -> tuple[int, ...]:
        return tuple(len(values) for values in (self.feature_values or {}).values())

    @property
    def series_cardinality(self) -> int:
        return len(self.series_values or [])

    def context(self, requested: Sequence[Features | None] | None, batch: int) -> torch.Tensor | None:
        """[B, F] codes of each history's user features; None for a model without them."""
        if self.feature_values is None:
            if requested is not None and any(features is not None for features in requested):
                raise ValueError("this model takes no user_features")
            return None
        requested = _per_history(requested, batch, "user_features")
        codes = np.zeros((batch, len(self._feature_codes)), np.int64)
        names = list(self._feature_codes)
        for b, features in enumerate(requested):
            if features is None:
                continue
            if set(features) != set(names):
                raise ValueError(f"user_features must give exactly the model's features {names}, "
                                 f"got {sorted(features)}")
            for f, name in enumerate(names):
                codes[b, f] = _code(self._feature_codes[name], features[name], f"user_features.{name}")
        return torch.from_numpy(codes)

    def changes(self, requested: Sequence[Changes | None] | None, first_times: np.ndarray,
                query_times: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch's series_codes, series_timestamps and series_offsets (genrec.data.batch.SequenceBatch); {} for a
        model without change tokens. first_times, query_times [B]: each history's first event and query time."""
        if self.series_values is None:
            if requested is not None and any(changes for changes in requested if changes is not None):
                raise ValueError("this model takes no changes")
            return {}
        requested = _per_history(requested, len(first_times), "changes")
        users, times, codes = [], [], []
        for b, pairs in enumerate(requested):
            for timestamp, value in pairs or ():
                if int(timestamp) > query_times[b]:
                    raise ValueError(f"changes: a change at {int(timestamp)} is after the query time "
                                     f"({query_times[b]})")
                users.append(b)
                times.append(int(timestamp))
                codes.append(_code(self._series_codes, value, "changes"))
        given = UserChanges(np.asarray(users, np.int64), np.asarray(times, np.int64), np.asarray(codes, np.int64),
                            "request", tuple(self.series_values))
        series = UserSeries.of_users(given, np.arange(len(first_times)), self.max_series_len)
        window = series.window(first_times, query_times)
        return {name: torch.from_numpy(part)
                for name, part in zip(("series_codes", "series_timestamps", "series_offsets"), window)}


def _codes(values: list[str]) -> dict[str, int]:
    return {value: code for code, value in enumerate(values, start=1)}


def _code(codes: dict[str, int], value: str | int, what: str) -> int:
    code = codes.get(str(value))
    if code is None:
        known = list(codes)
        raise ValueError(f"{what}: unknown value {value!r} (known: {', '.join(known[:10])}"
                         f"{', ...' if len(known) > 10 else ''})")
    return code


def _per_history(requested: Sequence | None, batch: int, what: str) -> Sequence:
    if requested is None:
        return [None] * batch
    if len(requested) != batch:
        raise ValueError(f"{what}: {len(requested)} entries for {batch} histories")
    return requested
