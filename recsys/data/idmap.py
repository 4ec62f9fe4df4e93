"""External id <-> contiguous index mapping.

Models, embeddings and indexes work on contiguous ``int`` indices; only this map (when a
dataset is built) and the :class:`~recsys.serving.retriever.Retriever` (when a question
is answered) see external ids. External ids are normalised to strings so that an id
read as ``int`` from one file and as ``str`` from another stays the same id; an integral
float (``12.0``, as pandas writes an int column with a gap) is the integer's id ``"12"``.

The map is append-only: :meth:`IdMap.extend` gives new ids the next free indices and
never moves an existing one, so an item keeps its index (and its row in every factor
matrix) across nightly runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import InputError, UnknownIdError
from recsys.io import atomic_path


def id_text(external_id: object) -> str:
    """The string form of one external id: ``12``, ``"12"`` and ``12.0`` are all ``"12"``."""
    if isinstance(external_id, (float, np.floating)) and float(external_id).is_integer():
        return str(int(external_id))
    return str(external_id)


class IdMap:
    """Bidirectional map between external ids (strings) and indices ``0..n-1``.

    Parameters
    ----------
    ids : sequence of str
        External ids in index order (``ids[i]`` has index ``i``). Must be unique.
    name : str
        What the ids are ("user", "item"); used in error messages.
    """

    def __init__(self, ids: Sequence[str] | np.ndarray = (), name: str = "id") -> None:
        self.name = name
        arr = np.asarray([id_text(x) for x in ids], dtype=object) if len(ids) else np.empty(0, object)
        self._ids: list[str] = list(arr)
        self._index: dict[str, int] = {s: i for i, s in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise InputError(f"{name} ids are not unique; de-duplicate them before building an IdMap")

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return id_text(external_id) in self._index

    def __repr__(self) -> str:
        return f"IdMap(name={self.name!r}, n={len(self)})"

    @property
    def ids(self) -> list[str]:
        """External ids in index order."""
        return list(self._ids)

    def extend(self, external_ids: Iterable[object]) -> int:
        """Append ids not yet known (in first-seen order); return how many were added."""
        added = 0
        for x in external_ids:
            s = id_text(x)
            if s not in self._index:
                self._index[s] = len(self._ids)
                self._ids.append(s)
                added += 1
        return added

    def append_new(self, external_ids: Sequence[str]) -> None:
        """Append ids known to be new and distinct (a bulk :meth:`extend` without per-id checks).

        The build appends hundreds of thousands of ids at once after it has already
        joined them against the map; this skips the Python loop of :meth:`extend`.

        Raises
        ------
        InputError
            If an id is already in the map or repeated (the map would lose its 1:1 property).
        """
        ids = [id_text(x) for x in external_ids]
        start = len(self._ids)
        self._index.update(zip(ids, range(start, start + len(ids))))
        self._ids.extend(ids)
        if len(self._index) != len(self._ids):
            del self._ids[start:]
            self._index = {s: i for i, s in enumerate(self._ids)}
            raise InputError(f"append_new got {self.name} ids that are repeated or already known")

    def to_index(self, external_ids: Iterable[object] | object, missing: str = "raise") -> np.ndarray | int:
        """Map external id(s) to indices.

        Parameters
        ----------
        external_ids : id or iterable of ids
        missing : {"raise", "ignore"}
            ``"raise"`` raises :class:`~recsys.errors.UnknownIdError` naming the first
            unknown ids; ``"ignore"`` returns ``-1`` for them.
        """
        scalar = isinstance(external_ids, (str, int, float, np.integer, np.floating))
        seq = [external_ids] if scalar else list(external_ids)  # type: ignore[arg-type]
        out = np.fromiter((self._index.get(id_text(x), -1) for x in seq), dtype=np.int64, count=len(seq))
        if missing == "raise" and (out < 0).any():
            unknown = [seq[i] for i in np.flatnonzero(out < 0)[:5]]
            raise UnknownIdError(f"unknown {self.name} id(s) {unknown}; they are not in the id map")
        return int(out[0]) if scalar else out

    def to_external(self, indices: Iterable[int] | int) -> np.ndarray | str:
        """Map indices back to external ids (object array of str)."""
        if isinstance(indices, (int, np.integer)):
            if not 0 <= int(indices) < len(self._ids):
                raise UnknownIdError(f"{self.name} index {int(indices)} out of range [0, {len(self)})")
            return self._ids[int(indices)]
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self._ids)):
            raise UnknownIdError(f"{self.name} index out of range [0, {len(self)})")
        ids = np.asarray(self._ids, dtype=object)
        return ids[idx] if len(ids) else np.empty(idx.shape, dtype=object)

    def to_frame(self) -> pl.DataFrame:
        """The map as a table with columns ``idx`` (int32) and ``external_id`` (str)."""
        return pl.DataFrame(
            {"idx": np.arange(len(self), dtype=np.int32), "external_id": pl.Series(self._ids, dtype=pl.Utf8)}
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the map to parquet, atomically."""
        with atomic_path(path) as tmp:
            self.to_frame().write_parquet(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, name: str = "id") -> IdMap:
        """Read a map written by :meth:`save`, checking that indices are ``0..n-1``."""
        df = pl.read_parquet(Path(path))
        if set(df.columns) < {"idx", "external_id"}:
            raise InputError(f"{path} is not an id map (needs columns idx, external_id)")
        df = df.sort("idx")
        if not np.array_equal(df["idx"].to_numpy(), np.arange(df.height)):
            raise InputError(f"{path}: indices are not contiguous 0..n-1; the id map is corrupted")
        return cls(df["external_id"].to_list(), name=name)
