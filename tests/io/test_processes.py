import os
import socket
import subprocess
import sys

from pipelines.io.processes import alive, owner_is_gone, owner_tag


def _a_finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_leftovers_of_gone_processes_on_this_host_are_judged_gone():
    gone = _a_finished_pid()
    assert not alive(gone) and alive(os.getpid())
    assert owner_is_gone(f"save-{owner_tag(gone)}-abc", "save-")
    assert not owner_is_gone(f"save-{owner_tag()}-abc", "save-")
    assert not owner_is_gone(f"save-elsewhere-{socket.gethostname()}-{gone}-abc", "save-")
    assert not owner_is_gone(f"save-{socket.gethostname()}-notapid-abc", "save-")
    assert not owner_is_gone(f"other-{owner_tag(gone)}-abc", "save-")
