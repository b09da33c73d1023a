"""kill -9 at a chosen moment, for the tests that resume or survive after it."""

import os
import signal
import time


def kill_when(ready, proc=None, pid=None, timeout=120.0):
    """SIGKILL a process as soon as ``ready()`` is true.

    Polls ``ready`` every 10 ms; gives up waiting after ``timeout`` seconds or
    when ``proc`` has exited by itself, and kills anyway (the caller's asserts
    then say the kill came too late). ``proc`` (a ``subprocess.Popen``) is
    also reaped; ``pid`` is any other process, e.g. a Dask worker.
    """
    if (proc is None) == (pid is None):
        raise ValueError("give exactly one of proc and pid")
    deadline = time.monotonic() + timeout
    while not ready() and (proc is None or proc.poll() is None) and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc is not None:
        proc.kill()
        proc.wait()
    else:
        os.kill(pid, signal.SIGKILL)
