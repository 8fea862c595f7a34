"""Several server processes sharing one warm model: ``serve.workers = N``.

The parent loads the model once (the app and its holder, primed), then forks N server
processes, as gunicorn's ``preload_app`` does, each listening on the port with a socket of
its own (SO_REUSEPORT: the kernel spreads connections over them): each starts with the
model already in memory, shared with the others page by page until a deployment makes each
process load the new version on its own (a hot swap per process, as with one process).
uvicorn's own supervisor spawns fresh interpreters instead, each loading its own copy.

The parent only supervises: a server process that dies is forked again, SIGTERM/SIGINT
stop every process gracefully, and each server process ends when the parent does
(PR_SET_PDEATHSIG), so no server outlives a killed ``retrain serve``. Linux only (fork and
prctl); elsewhere ``serve.workers`` above 1 is refused with one line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from core.errors import RetrainError

log = logging.getLogger("retrain.serve")
PR_SET_PDEATHSIG = 1
# A server process that dies sooner than this after its start is not forked again at once.
RESTART_BACKOFF_SECONDS = 1.0


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class ForkedServers:
    """The parent of ``count`` forked uvicorn servers on ``sock``, each answering with ``app``."""

    def __init__(self, app: FastAPI, config: Callable[[FastAPI], uvicorn.Config], sock: socket.socket,
                 count: int, on_start: Callable[[FastAPI], None], on_end: Callable[[int], None],
                 on_stop: Callable[[FastAPI], None] | None = None):
        if not supported():
            raise RetrainError("serve.workers above 1 needs Linux (forked processes); set workers = 1")
        self.app, self.config, self.sock, self.count = app, config, sock, count
        self.on_start = on_start  # in each server process, before it answers
        self.on_end = on_end  # in the parent, with the pid of a server process that ended
        self.on_stop = on_stop  # in each server process, once it stopped answering
        self.children: dict[int, float] = {}  # pid -> started at
        self.stopping = False

    def run(self) -> None:
        self.parent = os.getpid()
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                self._fill()
                self._reap(block=False)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop_all()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _fill(self) -> None:
        while len(self.children) < self.count and not self.stopping:
            pid = os.fork()
            if pid == 0:
                self._serve_in_child()  # never returns
            self.children[pid] = time.monotonic()

    def _serve_in_child(self) -> None:
        code = 0
        try:
            # Uvicorn stops gracefully on these, then raises the signal again: it ends the
            # run here (SystemExit), so that what the process still holds is written first.
            signal.signal(signal.SIGTERM, _stop_serving)
            signal.signal(signal.SIGINT, _stop_serving)
            _die_with_parent(self.parent)
            own = listening_socket(self.sock)
            self.sock.close()
            self.on_start(self.app)
            try:
                uvicorn.Server(self.config(self.app)).run(sockets=[own])
            except SystemExit:
                pass
            if self.on_stop is not None:
                self.on_stop(self.app)
        except BaseException:  # a forked child must never return into the parent's code
            log.exception("server process %d failed", os.getpid())
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self, block: bool) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            if started is None:
                continue
            self.on_end(pid)
            if not self.stopping:
                log.warning("server process %d ended (%s); starting another", pid, _describe(status))
                if time.monotonic() - started < RESTART_BACKOFF_SECONDS:
                    time.sleep(RESTART_BACKOFF_SECONDS)
            if not block:
                return

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.children and time.monotonic() < deadline:
            self._reap(block=False)
            time.sleep(0.05)
        for pid in list(self.children):
            _signal(pid, signal.SIGKILL)
        self._reap(block=True)


def listening_socket(reserved: socket.socket) -> socket.socket:
    """A server process's own listening socket on the port ``reserved`` holds (bound with
    SO_REUSEPORT, never listening): the kernel spreads new connections evenly over the
    processes. With one shared listening socket, whichever process wakes first accepts them
    all: measured here, 31 of 32 kept-alive clients landed on one process."""
    host, port = reserved.getsockname()[:2]
    sock = socket.socket(reserved.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the parent process; stop server processes by hand")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _stop_serving(signum, frame) -> None:
    raise SystemExit(0)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
