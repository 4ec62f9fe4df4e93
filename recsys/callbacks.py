"""Hooks of the training protocol (:mod:`recsys.training`): tracking and progress plug in here.

Kept in its own module so that the protocol, the tuning loop and the tracking layer can all
import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Callbacks"]


class Callbacks:
    """Hooks called by the protocol; every method is a no-op here.

    Subclass it to track (:class:`recsys.tracking.TrackingCallbacks` logs to MLflow), show
    progress or enforce a budget. The protocol never does I/O itself.
    """

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        """A configuration is about to be fitted on ``train`` (tuning: one trial)."""

    def evaluated(self, step: int, metrics: Mapping[str, float]) -> None:
        """Validation metrics of the current trial at iteration/epoch ``step``."""

    def trial_finished(self, trial: Any) -> None:
        """A trial ended (a :class:`recsys.tuning.Trial`; a callback may set its ``run_id``)."""

    def selected(self, trials: Sequence[Any], best: Any, metric: str) -> None:
        """Selection is over: all trials and the best one."""

    def tested(self, metrics: Mapping[str, float]) -> None:
        """The single test evaluation of the selected, refitted model."""
