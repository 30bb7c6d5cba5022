"""Per-user context features (the paper's user-context prefix tokens): MovieLens' demographic files,
ML-1M `users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) and ML-100K `u.user`
(`user id | age | gender | occupation | zip code`).

Every feature is categorical: each distinct value gets a dense code 1..V in sorted order; 0 means
unknown (a user of the ratings file that the features file does not list). The zip code keeps its
first digit (the US region), enough to place a user without a code per household.

Shapes: N users in the file, U users in the sequences, F features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.data.events import BadRows, find_data_file, parse_int, split_lines

# dataset: (file names tried inside a directory, separator, column of each feature)
_LAYOUTS = {
    "ml-1m": (("users.dat", "users.dat.gz"), "::", {"gender": 1, "age": 2, "occupation": 3, "zip_region": 4}),
    "ml-100k": (("u.user", "u.user.gz"), "|", {"age": 1, "gender": 2, "occupation": 3, "zip_region": 4}),
}


@dataclass
class UserFeatures:
    user_ids: np.ndarray  # [N] source user ids
    codes: np.ndarray  # [N, F] int64 in 1..V_f
    names: tuple[str, ...]  # [F]
    values: tuple[tuple[str, ...], ...]  # [F][V_f]: code c of feature f is values[f][c - 1]

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """[F]: V_f, so a table needs V_f + 1 rows (0 = unknown)."""
        return tuple(len(values) for values in self.values)

    def vocabulary(self) -> dict[str, list[str]]:
        """Each feature's values in code order (code c is the (c - 1)-th), as a run keeps them for serving."""
        return {name: list(values) for name, values in zip(self.names, self.values)}

    def align(self, user_vocab: np.ndarray) -> tuple[np.ndarray, int]:
        """Codes of the given source user ids, [U, F] (rows of 0 for users the file lacks), and how
        many users it lacks."""
        order = np.argsort(self.user_ids)
        found = np.searchsorted(self.user_ids, user_vocab, sorter=order)
        found = np.minimum(found, len(order) - 1)
        rows = order[found]
        known = self.user_ids[rows] == user_vocab
        context = np.where(known[:, None], self.codes[rows], 0).astype(np.int64)
        return context, int((~known).sum())


def read_user_features(dataset: str, path: str | Path, skip_bad_rows: bool = False) -> UserFeatures:
    """Reads a MovieLens user file (`path`: the file or its directory); a repeated user id, a row with
    the wrong number of fields or a non-integer id is an error (or skipped and counted)."""
    if dataset not in _LAYOUTS:
        raise ValueError(f"user features are read for {', '.join(_LAYOUTS)}, not {dataset!r}")
    names, separator, columns = _LAYOUTS[dataset]
    features_file = find_data_file(Path(path), names, f"the user features of {dataset}")
    bad = BadRows(str(features_file), skip_bad_rows)
    user_ids, values = [], []
    seen: set[int] = set()
    for line_number, fields in split_lines(features_file, separator, "latin-1"):
        if len(fields) != 5:
            bad.report(line_number, f"expected 5 fields separated by {separator!r}, got {len(fields)}")
            continue
        user = parse_int(fields[0], "user id", line_number, bad)
        if user is None:
            continue
        if user in seen:
            bad.report(line_number, f"user id {user} is listed twice")
            continue
        seen.add(user)
        user_ids.append(user)
        values.append([fields[i].strip()[:1] if name == "zip_region" else fields[i].strip()
                       for name, i in columns.items()])
    if not user_ids:
        raise ValueError(f"{features_file}: no users")
    codes, vocabularies = [], []
    for column in zip(*values):
        vocabulary, dense = np.unique(np.asarray(column), return_inverse=True)
        codes.append(dense + 1)
        vocabularies.append(tuple(vocabulary.tolist()))
    return UserFeatures(np.asarray(user_ids, np.int64), np.stack(codes, axis=1).astype(np.int64),
                        tuple(columns), tuple(vocabularies))
