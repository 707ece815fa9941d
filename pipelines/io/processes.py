"""Leftovers of killed processes: files named after the process that owns them.

A process killed with SIGKILL runs no cleanup, so whatever it was building (a staging folder,
a hidden temporary table) stays behind. Such files carry their owner's host and process id, and
the next process that builds the same thing removes those whose owner is gone. Only owners on
this host are judged: another host's process ids mean nothing here.
"""

from __future__ import annotations

import os
import socket


def owner_tag(pid: int | None = None) -> str:
    """``HOST-PID`` of this process (or of ``pid`` on this host), for a file name."""
    return f"{socket.gethostname()}-{os.getpid() if pid is None else pid}"


def owner_is_gone(name: str, prefix: str) -> bool:
    """Whether ``name`` (``PREFIX HOST-PID-...``) was made by a process of this host that no
    longer runs."""
    host = f"{prefix}{socket.gethostname()}-"
    if not name.startswith(host):
        return False
    pid = name[len(host):].split("-", 1)[0]
    return pid.isdigit() and not alive(int(pid))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
