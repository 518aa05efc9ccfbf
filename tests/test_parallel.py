"""tasks.parallel's measurement of a stage's memory: its worker processes count, a stage running in a
process of its own (`in_own_process`) does not count for its caller."""

import subprocess
import sys
import time

from tasks.parallel import in_own_process, peak_memory

HOLD = "import sys, time; b = bytearray({mb} * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep({s})"


def _hold(mb: int, seconds: float) -> int:
    """A child process holding ``mb`` MB resident for ``seconds``."""
    return subprocess.run([sys.executable, "-c", HOLD.format(mb=mb, s=seconds)], check=True).returncode


def test_a_worker_processes_memory_counts_in_the_peak():
    with peak_memory(interval=0.05) as alone:
        time.sleep(0.3)
    with peak_memory(interval=0.05) as with_child:
        _hold(400, 1.0)
    assert with_child["peak_mb"] - alone["peak_mb"] > 350, (alone, with_child)


def test_a_stage_in_its_own_process_is_not_counted_by_its_caller():
    with peak_memory(interval=0.05) as alone:
        time.sleep(0.3)
    with peak_memory(interval=0.05) as caller:
        in_own_process(_hold, 400, 1.5)
    assert caller["peak_mb"] - alone["peak_mb"] < 150, (alone, caller)  # python of its own: ~40 MB at most
