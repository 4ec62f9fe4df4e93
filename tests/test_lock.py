import os
import signal
import subprocess
import sys
import time

import pytest

from recsys.errors import LockError
from recsys.lock import DirectoryLock

HOLD = """
import sys, time
from recsys.lock import DirectoryLock
with DirectoryLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _start_holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_locker_is_refused_with_the_holders_pid(tmp_path):
    p = _start_holder(tmp_path)
    try:
        with pytest.raises(LockError, match=f"pid {p.pid}"):
            DirectoryLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    p = _start_holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with caplog.at_level("WARNING"), DirectoryLock(tmp_path) as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert "stale lock" in caplog.text and str(p.pid) in caplog.text


def test_lock_is_reentrant_after_release(tmp_path):
    with DirectoryLock(tmp_path):
        pass
    t0 = time.monotonic()
    with DirectoryLock(tmp_path):
        pass
    assert time.monotonic() - t0 < 5
