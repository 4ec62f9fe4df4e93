"""Helpers shared by the input-data side of the adversarial suite (``test_data_*.py``).

Each case runs twice: through the library (``build_dataset`` on a ``BuildConfig``, the
exception type) and through the command line (``recsys build-dataset``, the exit code a
scheduler sees: 0 done, 2 bad input, never 1 for bad data).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main as cli_main
from recsys.data.build import BuildConfig
from recsys.data.readers import InputSpec
from recsys.data.splits import SplitConfig
from recsys.data.validate import ColumnMapping

NO_HOLDOUT = SplitConfig(test_frac=0.0, valid_frac=0.0)


def config(path: Path | str, user: str = "u", item: str = "i", **kw: Any) -> BuildConfig:
    """A build of every row into train (no holdout), columns ``u``/``i`` unless told."""
    spec = kw.pop("spec", None) or InputSpec(str(path), **kw.pop("spec_kw", {}))
    mapping = ColumnMapping(user, item, weight=kw.pop("weight", None), time=kw.pop("time", None), event_type=kw.pop("event_type", None))
    return BuildConfig(spec, mapping, split=kw.pop("split", NO_HOLDOUT), **kw)


def cli_build(events: Path | str, out: Path, *flags: str, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    """``recsys build-dataset`` on ``events`` (columns ``u``/``i``): (exit code, what it logged).

    The CLI logs to stderr; pass ``capsys`` to get that text back.
    """
    argv = ["build-dataset", "--events", str(events), "--user-col", "u", "--item-col", "i",
            "--test-frac", "0", "--valid-frac", "0", "--no-hash", "--out", str(out), *flags]
    if capsys is not None:
        capsys.readouterr()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = cli_main(argv)
    finally:  # the CLI installs its own handler on the (capsys) stderr of this test
        root.handlers[:], root.level = handlers, level
    return code, capsys.readouterr().err if capsys is not None else ""
