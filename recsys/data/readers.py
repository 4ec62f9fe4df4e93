"""Scan interaction logs and item metadata as polars LazyFrames.

Real logs arrive in many shapes, so one reader covers them all instead of one adapter
per data source: CSV or Parquet; a single file, a glob (``logs/*.parquet``) or a
directory. A directory whose sub-directories are date partitions (``dt=2026-11-25/``,
any ``key=YYYY-MM-DD`` name) is read partition by partition, and a trailing window
(``as_of`` + ``window_days``) selects only the partitions a nightly job needs, without
listing or opening the others.

CSV files are read with every column as a string: type errors (an ``"abc"`` in a rating
column) then surface as rejected rows in validation instead of a parse failure halfway
through a 10 GB file. Parquet keeps its types.
"""

from __future__ import annotations

import datetime as dt
import glob
import io
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.data.profile import id_expr, id_kind
from recsys.errors import ConfigError, InputError, SchemaError

log = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "parquet")
_PARTITION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=(\d{4}-\d{2}-\d{2})$")
_DATA_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".data": "csv", ".item": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class InputSpec:
    """Where one input table lives and how to parse it.

    Parameters
    ----------
    path : str
        A file, a glob pattern, or a directory (plain or of ``key=YYYY-MM-DD`` partitions).
    format : {"auto", "csv", "parquet"}
        ``"auto"`` decides from the file suffix (``.parquet``/``.pq`` -> Parquet, else CSV).
    sep : str
        CSV field separator (``"\\t"`` for MovieLens 100K ``u.data``, ``"|"`` for ``u.item``).
    has_header : bool
        ``False`` for headerless CSV files; then ``columns`` names the fields.
    columns : tuple of str or None
        Column names for a headerless CSV (or to rename the header of one with a header).
    encoding : str
        Text encoding of CSV files (``"utf8"``, ``"latin-1"``, ...). Non-UTF-8 files are
        decoded in Python, which is fine for item tables but slow for huge logs.
        ``"utf8-lossy"`` replaces invalid bytes by U+FFFD instead of failing (rows whose
        ids they damage are then rejected, see :mod:`recsys.data.validate`).
    quote_char : str or None
        CSV quote character; ``None`` disables quoting.
    """

    path: str
    format: str = "auto"
    sep: str = ","
    has_header: bool = True
    columns: tuple[str, ...] | None = None
    encoding: str = "utf8"
    quote_char: str | None = '"'

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"input format {self.format!r} is not one of {FORMATS}")
        if not self.has_header and not self.columns:
            raise ConfigError(f"{self.path}: a CSV without header needs `columns` (the names of its fields)")
        if len(self.sep) != 1:
            raise ConfigError(f"CSV separator must be one character, got {self.sep!r} (use \"\\t\" for tabs)")
        if self.columns is not None and not isinstance(self.columns, tuple):
            object.__setattr__(self, "columns", tuple(self.columns))


def _parse_date(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{what} must be a date YYYY-MM-DD, got {value!r}") from None


def window_bounds(as_of: str | dt.date | None, window_days: int | None) -> tuple[dt.date | None, dt.date | None]:
    """Inclusive ``(first, last)`` dates of a trailing window; ``None`` means unbounded.

    ``as_of=2026-11-25, window_days=7`` covers 2026-11-19 .. 2026-11-25 (7 days).
    """
    if window_days is not None and window_days < 1:
        raise ConfigError(f"window_days must be >= 1, got {window_days}")
    if as_of is None:
        if window_days is not None:
            raise ConfigError("window_days needs as_of (the last day of the window, e.g. --as-of 2026-11-25)")
        return None, None
    last = _parse_date(as_of, "as_of")
    first = last - dt.timedelta(days=window_days - 1) if window_days else None
    return first, last


def _partitions(directory: Path) -> list[tuple[dt.date, Path]]:
    out = []
    for child in directory.iterdir():
        m = _PARTITION.match(child.name)
        if child.is_dir() and m:
            try:
                out.append((dt.date.fromisoformat(m.group(1)), child))
            except ValueError:
                raise InputError(f"partition directory {child} has an invalid date") from None
    return sorted(out)


def _data_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES and not p.name.startswith((".", "_")))
    return files


def resolve_files(path: str, as_of: str | dt.date | None = None, window_days: int | None = None) -> tuple[list[Path], bool]:
    """Expand ``path`` into the list of files to read.

    Returns
    -------
    files : list of Path
        Sorted, so that the same inputs always give the same row order.
    partitioned : bool
        Whether ``path`` was a directory of date partitions (the window was then applied
        by selecting partitions).
    """
    first, last = window_bounds(as_of, window_days)
    p = Path(path)
    if any(ch in str(path) for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
        if not files:
            raise InputError(f"no file matches the pattern {path!r}")
        return files, False
    if not p.exists():
        raise InputError(f"input {path!r} does not exist; check the path (relative paths in a TOML config are relative to the config file)")
    if p.is_file():
        return [p], False
    parts = _partitions(p)
    if parts:
        chosen = [d for day, d in parts if (first is None or day >= first) and (last is None or day <= last)]
        log.info("%s: %d date partitions, %d in window %s..%s", path, len(parts), len(chosen), first or "start", last or "end")
        if not chosen:
            raise InputError(
                f"no date partition of {path} falls in the window {first or '-inf'}..{last or '+inf'} "
                f"(partitions span {parts[0][0]}..{parts[-1][0]}); check --as-of/--window-days"
            )
        files = [f for d in chosen for f in _data_files(d)]
        if not files:
            raise InputError(f"the selected partitions of {path} contain no CSV or Parquet files")
        return files, True
    files = _data_files(p)
    if not files:
        raise InputError(f"directory {path} contains no CSV or Parquet files")
    return files, False


def _format_of(files: list[Path], declared: str) -> str:
    if declared != "auto":
        return declared
    kinds = {_DATA_SUFFIXES.get(f.suffix.lower(), "csv") for f in files}
    if len(kinds) > 1:
        raise InputError(f"inputs mix CSV and Parquet files ({files[0]}, ...); point at one kind or set format")
    return kinds.pop()


def _scan_csv(files: list[Path], spec: InputSpec) -> pl.LazyFrame:
    common = dict(
        separator=spec.sep,
        has_header=spec.has_header,
        quote_char=spec.quote_char,
        infer_schema=False,  # all strings: type problems become rejects, not crashes
    )
    rename = list(spec.columns) if spec.columns else None
    enc = spec.encoding.lower().replace("_", "-")
    if enc in ("utf8", "utf-8", "utf8-lossy"):
        return pl.scan_csv([str(f) for f in files], encoding="utf8-lossy" if enc == "utf8-lossy" else "utf8", new_columns=rename, **common)
    # polars' lazy CSV reader only decodes UTF-8: decode other encodings in Python.
    frames = []
    for f in files:
        try:
            text = f.read_bytes().decode(spec.encoding)
        except LookupError:
            raise ConfigError(f"unknown encoding {spec.encoding!r} for {f}") from None
        except UnicodeDecodeError as e:
            raw = f.read_bytes()
            line = raw[: e.start].count(b"\n") + 1
            raise InputError(
                f"{f}, line {line} (byte {e.start}): {raw[e.start:e.end]!r} is not valid {spec.encoding}; "
                "set the file's real encoding (`encoding` in the config section of this input)"
            ) from None
        frames.append(pl.read_csv(io.BytesIO(text.encode()), new_columns=rename, **common))
    return pl.concat(frames, how="vertical").lazy()


def find_invalid_utf8(files: Sequence[Path], block: int = 1 << 20) -> tuple[Path, int, int, bytes] | None:
    """The first byte sequence that is not UTF-8: ``(file, line, byte offset, bytes)``.

    Polars only says "invalid utf-8 sequence"; a user needs the file and the line to
    look at. Files are decoded block by block (a multi-byte character may straddle two
    blocks), so this runs in constant memory; it is only called after a read failed.
    """
    for f in files:
        base, line, pending = 0, 1, b""
        with open(f, "rb") as fh:
            while True:
                chunk = fh.read(block)
                data, final = pending + chunk, not chunk
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError as e:
                    if not final and e.reason == "unexpected end of data" and len(data) - e.start < 4:
                        good, pending = data[: e.start], data[e.start :]  # completed by the next block
                    else:
                        line += data[: e.start].count(b"\n")
                        return f, line, base + e.start, data[e.start : e.end]
                else:
                    good, pending = data, b""
                if final:
                    break
                line += good.count(b"\n")
                base += len(good)
    return None


def read_error(exc: Exception, spec: InputSpec, files: Sequence[Path], what: str) -> InputError:
    """Translate a polars read failure into an :class:`~recsys.errors.InputError` that names the fix.

    ``what`` names the input and the config section of its options: ``"events"`` or
    ``"items"``.
    """
    msg = str(exc)
    if "utf-8" in msg.lower() or "utf8" in msg.lower():
        where = find_invalid_utf8(files) if spec.format != "parquet" else None
        place = f"{where[0]}, line {where[1]} (byte {where[2]}): {where[3]!r} is" if where else f"{spec.path} is"
        flag = " (or --events-encoding)" if what == "events" else ""
        return InputError(
            f"{place} not valid UTF-8. Set the encoding of the {what}: `encoding = \"utf8-lossy\"` in [{what}]{flag} "
            "replaces invalid bytes (rows whose ids they damage are then rejected), or give the file's real "
            "encoding, e.g. \"latin-1\""
        )
    if isinstance(exc, pl.exceptions.NoDataError):
        return InputError(f"the {what} input {spec.path} is empty ({msg}); check the path and the upstream job")
    if isinstance(exc, pl.exceptions.SchemaError):
        return InputError(
            f"the files of the {what} input {spec.path} disagree on their columns or types ({msg}); "
            "write every file with the same schema, or read them in separate builds"
        )
    return InputError(f"cannot read the {what} {spec.path}: {msg}")


@contextmanager
def reading(spec: InputSpec, files: Sequence[Path], what: str) -> Iterator[None]:
    """Turn polars read failures inside the block into input errors (exit code 2).

    Only failures of reading (parse errors, bad bytes, files that disagree, empty
    files) are translated: any other exception is a bug and stays what it is.
    """
    try:
        yield
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, pl.exceptions.SchemaError) as e:
        raise read_error(e, spec, files, what) from None


def scan_table(spec: InputSpec, as_of: str | dt.date | None = None, window_days: int | None = None) -> tuple[pl.LazyFrame, list[Path]]:
    """Scan one input table lazily.

    Parameters
    ----------
    spec : InputSpec
    as_of, window_days
        Trailing window applied to date-partitioned directories (see :func:`window_bounds`).

    Returns
    -------
    frame : polars.LazyFrame
        Columns as in the files (CSV: all strings).
    files : list of Path
        The files read, for hashing into the manifest.
    """
    files, _ = resolve_files(spec.path, as_of, window_days)
    fmt = _format_of(files, spec.format)
    if fmt == "parquet":
        lf = pl.scan_parquet([str(f) for f in files], hive_partitioning=False)
        if spec.columns:
            names = lf.collect_schema().names()
            if len(names) != len(spec.columns):
                raise ConfigError(f"{spec.path}: `columns` names {len(spec.columns)} fields but the files have {len(names)}")
            lf = lf.rename(dict(zip(names, spec.columns)))
    else:
        lf = _scan_csv(files, spec)
    return lf, files


def require_columns(
    lf: pl.LazyFrame, columns: list[str], what: str, spec: InputSpec | None = None, files: Sequence[Path] = (), section: str = "events"
) -> None:
    """Raise :class:`~recsys.errors.SchemaError` naming missing columns and the ones present.

    With ``spec`` (and the ``files`` scanned), a failure to read even the header is
    explained as :func:`read_error` does (file, line, the encoding option).
    """
    try:
        present = lf.collect_schema().names()
    except pl.exceptions.PolarsError as e:
        if spec is not None:
            raise read_error(e, spec, files, section) from None
        raise InputError(f"cannot read the {what}: {e}") from None
    missing = [c for c in columns if c not in present]
    if missing:
        damaged = [c for c in present if "\ufffd" in c]
        hint = (f" The header has bytes that are not UTF-8 ({damaged}): set the `encoding` of the input in [{section}]"
                if damaged else "")
        raise SchemaError(
            f"{what} have no column(s) {missing}; columns present: {present}. "
            f"Fix the column mapping (--user-col, --item-col, ... or the config file).{hint}"
        )


def read_items(spec: InputSpec, id_col: str, text_cols: tuple[str, ...] | list[str]) -> tuple[pl.DataFrame, list[Path], dict[str, int]]:
    """Read item metadata: one row per item id, text columns as strings.

    Rows without an id are dropped and counted; a repeated id keeps its first row (also
    counted), so the manifest says what happened to every metadata row.

    Returns
    -------
    items : polars.DataFrame
        ``external_id`` (str), the text columns (str) and a marker column ``__has_meta``.
    files : list of Path
    stats : dict
        ``rows``, ``rows_missing_id``, ``duplicate_ids``, ``rows_unique``.
    """
    reserved = {"external_id", "item_idx", "__has_meta"}
    clash = reserved.intersection(text_cols)
    if clash:
        raise ConfigError(f"item text column name(s) {sorted(clash)} are reserved; rename them in the item table")
    lf, files = scan_table(spec)
    require_columns(lf, [id_col, *text_cols], "item metadata", spec, files, "items")
    with reading(spec, files, "items"):
        # the same normalisation as the item ids of the events (1.0 -> "1"), or items and
        # their metadata would not meet
        kind = id_kind(lf, id_col, lf.collect_schema()[id_col], "item", flag="--item-id-col")
        ident = id_expr(id_col, kind).cast(pl.String)
        df = lf.select(ident.alias("external_id"), *[pl.col(c).cast(pl.String) for c in text_cols if c != id_col], *(
            [pl.col(id_col).cast(pl.String).alias(f"{id_col}__text")] if id_col in text_cols else []
        )).collect()
    if id_col in text_cols:
        df = df.rename({f"{id_col}__text": id_col})
    rows = df.height
    df = df.filter(pl.col("external_id").is_not_null() & (pl.col("external_id").str.len_bytes() > 0))
    with_id = df.height
    df = df.unique("external_id", keep="first", maintain_order=True).with_columns(pl.lit(True).alias("__has_meta"))
    stats = {"rows": rows, "rows_missing_id": rows - with_id, "duplicate_ids": with_id - df.height, "rows_unique": df.height}
    if stats["rows_missing_id"] or stats["duplicate_ids"]:
        log.warning("item metadata %s: %d rows without id, %d repeated ids (first row kept)", spec.path, stats["rows_missing_id"], stats["duplicate_ids"])
    return df.select("external_id", *text_cols, "__has_meta"), files, stats
