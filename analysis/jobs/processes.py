"""Is a process still the one we started? Liveness by pid and start time (standard library only).

A pid alone is not enough: pids are recycled, so a record names the process by ``(pid, start_ticks)``, the
start time in clock ticks after boot from ``/proc/<pid>/stat``. A zombie counts as gone. Where ``/proc`` does
not exist, the signal-0 check is all there is.

Standard library only: :mod:`analysis.jobs.job_queue` imports this module also when it runs as a script,
the small waiting process of a queued job, which never imports torch.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state letter, start time in clock ticks)`` of ``pid`` from ``/proc``, or None if unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself contain spaces or parentheses
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None where ``/proc`` cannot tell."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` exists, is not a zombie, and (when known) started at ``start_ticks``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc here: the signal check is all there is
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_ticks is None or ticks == start_ticks


def kill_and_wait(pid: int, start_ticks: int | None, timeout_s: float = 10.0) -> bool:
    """SIGKILL the process ``(pid, start_ticks)`` if it is still that process; True once it is gone.

    A child of this process is reaped here (``waitpid``), so it does not linger as a zombie."""
    if not process_alive(pid, start_ticks):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: init reaps it
            pass
        if not process_alive(pid, start_ticks):
            return True
        time.sleep(0.02)
    return False
