"""common/runlock.py: the lock of a killed holder is taken over with a message, the stages of one process share
the lock (re-entrant) and release it. Another process holding the lock is hold_lock (helpers.py); a second writer
refused through launch.py is in test_failures_runs.py."""

import json
import os

from common import runlock
from helpers import hold_lock


def test_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    holder = hold_lock(tmp_path)
    holder.kill()  # SIGKILL: no clean release, the lock file keeps its content
    holder.wait()
    assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["pid"] == holder.pid
    messages = []
    runlock.acquire(tmp_path, log=messages.append)
    try:
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0] and "no longer running" in messages[0]
        assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        runlock.release(tmp_path)
    assert (tmp_path / runlock.LOCK_NAME).read_text() == "", "a clean release leaves nothing stale"


def test_stages_of_one_run_share_the_lock_and_release_it(tmp_path, capsys):
    runlock.acquire(tmp_path)
    runlock.acquire(tmp_path)  # re-entrant within a process
    runlock.release_all()
    other = hold_lock(tmp_path)  # another process can take it now
    other.kill()
    other.wait()
