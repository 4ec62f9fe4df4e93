"""Idempotent, incremental steps for batch jobs.

A step is identified by its name and a *fingerprint*: the hashes of its inputs (files,
upstream step fingerprints) and its config. After a step finishes, a record with the
fingerprint and the list of outputs is written atomically to ``STATE/<step>.json``. A
rerun whose fingerprint matches a record whose outputs all still exist does no work and
says so; any change (new input partition, edited config, re-run upstream step) changes
the fingerprint and so re-runs that step and, through the chained fingerprints, every
step downstream of it.

A process killed mid-step leaves no record (the record is written last), so the next
run simply does the step again; outputs themselves are written atomically by the steps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.io import read_json, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)


def fingerprint_files(paths: list[str | os.PathLike]) -> dict[str, str]:
    """sha256 of each file (directories: of each file inside, sorted) for a fingerprint."""
    out: dict[str, str] = {}
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = sha256_file(f)
    return out


@dataclass
class StepResult:
    """What happened to one step: ``ran`` False means it was up to date and skipped."""

    name: str
    fingerprint: str
    ran: bool
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


class Workflow:
    """Runs named steps, skipping those whose fingerprint and outputs are unchanged.

    Parameters
    ----------
    state_dir : path
        Where step records live (one JSON file per step).
    force : bool
        Re-run every step even when up to date.
    """

    def __init__(self, state_dir: str | os.PathLike, force: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.force = force
        self.results: list[StepResult] = []

    def record(self, name: str) -> dict[str, Any] | None:
        """The last completed record of a step, or None."""
        p = self.state_dir / f"{name}.json"
        return read_json(p) if p.exists() else None

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> StepResult:
        """Run ``fn`` unless step ``name`` already completed with the same ``inputs``.

        ``fn`` returns a dict of outputs (JSON-serialisable); values that are paths
        (keys ending in ``_path``) must still exist for the step to count as done.
        """
        fp = sha256_json({"step": name, "inputs": inputs})
        rec = self.record(name)
        if not self.force and rec and rec.get("fingerprint") == fp and self._outputs_exist(rec.get("outputs", {})):
            log.info("step %-14s up to date (fingerprint %s): nothing to do", name, fp[:12])
            res = StepResult(name, fp, ran=False, seconds=0.0, outputs=rec["outputs"])
        else:
            why = "forced" if self.force else ("no previous record" if not rec else "inputs or config changed")
            log.info("step %-14s running (%s)", name, why)
            t0 = time.perf_counter()
            outputs = fn() or {}
            res = StepResult(name, fp, ran=True, seconds=time.perf_counter() - t0, outputs=outputs)
            write_json(self.state_dir / f"{name}.json", {
                "step": name, "fingerprint": fp, "inputs": inputs, "outputs": outputs,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(res.seconds, 3),
            })
        self.results.append(res)
        return res

    @staticmethod
    def _outputs_exist(outputs: dict[str, Any]) -> bool:
        return all(Path(v).exists() for k, v in outputs.items() if k.endswith("_path") and v)
