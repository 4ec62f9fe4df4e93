"""Run ``recsys`` with one function patched to stall mid-step, for SIGKILL tests.

Usage: ``python tests/fault_driver.py WHERE MARKER -- recsys-args...``

``WHERE`` picks the stall point: ``dataset`` (after the first parquet file of the new
dataset is written into the temp dir), ``train`` (inside implicit's ALS fit), ``export``
(after the ``.ann`` file of the new bundle is written, before its manifest). When the
stall point is reached the driver touches ``MARKER`` and sleeps; the test then kills it
with SIGKILL, exactly as a crashed machine or the OOM killer would. Nothing in the
product knows about this: the patches are applied from outside.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def stall(marker: Path) -> None:
    marker.write_text("stalled")
    time.sleep(600)


def patch(where: str, marker: Path) -> None:
    if where == "dataset":
        import polars as pl

        original = pl.DataFrame.write_parquet

        def write_parquet(self, file, *a, **kw):  # noqa: ANN001
            out = original(self, file, *a, **kw)
            stall(marker)
            return out

        pl.DataFrame.write_parquet = write_parquet
    elif where == "train":
        from implicit.cpu.als import AlternatingLeastSquares

        def fit(self, *a, **kw):  # noqa: ANN001
            stall(marker)

        AlternatingLeastSquares.fit = fit
    elif where == "export":
        from recsys.index.annoy_index import AnnoyIndex
        from recsys.index.norm_ranged import NormRangedAnnoyIndex

        for cls in (AnnoyIndex, NormRangedAnnoyIndex):  # one forest, or one per norm range
            def save(self, *a, _original=cls.save, **kw):  # noqa: ANN001
                out = _original(self, *a, **kw)
                stall(marker)
                return out

            cls.save = save
    else:
        raise SystemExit(f"unknown stall point {where!r}")


if __name__ == "__main__":
    where, marker, sep, *argv = sys.argv[1:]
    if sep != "--":
        raise SystemExit(__doc__)
    patch(where, Path(marker))
    from pipelines.cli import main

    sys.exit(main(argv))
