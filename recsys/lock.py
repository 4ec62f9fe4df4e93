"""An exclusive lock on an output directory, safe against crashed holders.

Two nightly runs on the same output directory would corrupt each other, so a run takes
an exclusive ``flock`` on ``DIR/.lock``. The kernel releases a ``flock`` when its
process dies (even by SIGKILL), so a lock left by a dead process is never stale in the
kernel's eyes; the holder's pid, host and start time are written next to it so that the
second run can say *who* holds the lock, and so that a leftover record of a dead holder
is reported as taken over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from recsys.errors import LockError

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    """Context manager holding an exclusive, non-blocking lock on ``directory``.

    Raises
    ------
    LockError
        When another live process holds the lock; the message names its pid and start.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ".lock"
        self._fd: int | None = None

    def holder(self) -> dict | None:
        """The holder record written by the current or last holder, if any."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder() or {}
            raise LockError(
                f"another run holds the lock on {self.directory} (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
                f"started {h.get('started', '?')}); wait for it to finish or use another --out"
            ) from None
        previous = self.holder()
        if previous and previous.get("pid") and not _pid_alive(int(previous["pid"])):
            log.warning("taking over a stale lock left by pid %s (started %s), which is no longer running",
                        previous["pid"], previous.get("started"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
