"""A server the daemon starts as a child (the embedded Prefect API), tethered to it.

``python -m service.runtime.tethered uvicorn ARGS...`` runs uvicorn's command line, with
two differences that make it a child the daemon owns:

- It does not act on the signals meant for the daemon. A terminal's Ctrl+C and systemd's
  ``KillMode=control-group`` send SIGINT/SIGTERM to every process of the group or cgroup
  at once; the API must stay up while the daemon lets its run in flight finish and report
  to it. So SIGINT and SIGTERM are ignored (the launcher also gives it a session of its
  own), and uvicorn's graceful stop listens to ``STOP_SIGNAL`` instead, which only the
  daemon sends.
- It never outlives the daemon: its stdin is a pipe whose other end only the daemon holds.
  When the daemon exits, however it exits (SIGKILL included), the pipe reads end-of-file;
  the server then stops gracefully, and is ended by force after ``ORPHAN_GRACE_SECONDS``.
  A pipe rather than Linux's parent-death signal: that one fires when the *thread* that
  started the child ends, and the daemon starts its API from a short-lived thread.

And it gives the memory its requests freed back to the system every few seconds
(``service.runtime.heap``): a long-lived server's heap would otherwise keep every page
it once used.
"""

import os
import signal
import sys
import threading

from service.runtime import heap

# What the daemon sends to stop the child gracefully (uvicorn's should_exit).
STOP_SIGNAL = signal.SIGUSR1
ORPHAN_GRACE_SECONDS = 10.0


def launch_options() -> dict:
    """``subprocess.Popen`` options that make the child a tethered one: a session of its
    own (no terminal's or group's signals) and a stdin pipe held only by this process."""
    import subprocess

    return {"start_new_session": True, "stdin": subprocess.PIPE}


def command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` tethered."""
    return [sys.executable, "-m", __name__, module, *args]


def stop(process, timeout: float = 5.0) -> None:
    """Stop a tethered child gracefully (``STOP_SIGNAL``), by force after ``timeout``."""
    import subprocess

    if process.poll() is None:
        process.send_signal(STOP_SIGNAL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdin is not None:
        process.stdin.close()


def _stop_when_parent_exits() -> None:
    try:
        while os.read(0, 4096):  # nothing is ever written: this returns at end-of-file
            pass
    except OSError:
        pass
    os.kill(os.getpid(), STOP_SIGNAL)  # graceful first
    threading.Timer(ORPHAN_GRACE_SECONDS, os._exit, args=(1,)).start()


def main(argv: list[str]) -> None:
    module, args = argv[0], argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(STOP_SIGNAL, signal.SIG_IGN)  # until the server listens: uvicorn restores this, exit 0
    threading.Thread(target=_stop_when_parent_exits, name="tether", daemon=True).start()
    heap.release_free_memory_periodically()  # for as long as the process lives
    if module == "uvicorn":
        import uvicorn.server

        # uvicorn's own handlers would replace the ignored ones at start; it listens to the
        # daemon's signal alone.
        uvicorn.server.HANDLED_SIGNALS = (STOP_SIGNAL,)
    import runpy

    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
