"""Threads that parse with ``ast`` at once (numpy's .npy headers, so every skops model load)
must not break each other's AST construction (python/cpython#106905; core.ast_guard)."""

import ast
import builtins
import gc
import io
import subprocess
import sys
import threading

import numpy as np
import pytest

from core import ast_guard
from core.ast_guard import compile_one_at_a_time

BUILTIN_COMPILE = compile_one_at_a_time.__wrapped__


def _npy(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape))
    return buffer.getvalue()


class _LetAnotherThreadIn:
    """A finalizer that, at the ``countdown``-th garbage collection, lets another thread load
    an array (parse its header) while this thread is wherever the collection caught it."""

    countdown = -1
    other_errors: list[str] = []
    others: list[threading.Thread] = []
    # How long this thread waits for the other one: with the guard the other thread waits
    # for this one's parse (so not for ever); without it, it ends at once.
    patience = 0.5

    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it

    def __del__(self) -> None:
        cls = _LetAnotherThreadIn
        cls.countdown -= 1
        if cls.countdown > 0:
            _LetAnotherThreadIn()  # for the next collection
        elif cls.countdown == 0:
            other = threading.Thread(target=cls.load_deeper, args=(_npy((3, 4)), 25))
            cls.others.append(other)
            other.start()
            other.join(timeout=cls.patience)

    @classmethod
    def load_deeper(cls, data: bytes, frames: int) -> None:
        """Load from a deeper stack than the first thread (the counter starts at the depth)."""
        if frames:
            return cls.load_deeper(data, frames - 1)
        try:
            np.load(io.BytesIO(data))
        except SystemError as exc:
            cls.other_errors.append(str(exc))


class _CountFromTheParse:
    """The builtin ``compile``, which, once armed, starts the countdown of collections when
    the next parse to an AST begins (collecting at every allocation from there): each
    countdown lands at the same point of the parse whatever the process did before."""

    def __init__(self) -> None:
        self.armed_with: int | None = None

    def __call__(self, source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):
        countdown, self.armed_with = self.armed_with, None
        if countdown is not None and flags & ast.PyCF_ONLY_AST:
            gc.collect()
            gc.disable()
            _LetAnotherThreadIn.countdown = countdown
            _LetAnotherThreadIn()
            gc.set_threshold(1)  # collect at every allocation: the collection lands inside the parse
            gc.enable()
        return BUILTIN_COMPILE(source, filename, mode, flags, dont_inherit, optimize, **kwargs)


def _interleaved_loads(guarded: bool, patience: float) -> list[str]:
    """Load one array while a garbage collection inside its header's parse lets a second
    thread load another, for each of several points of the parse, through the guard or
    through the builtin ``compile`` alone; the errors seen."""
    errors, data, threshold = [], _npy((1000, 20)), gc.get_threshold()
    _LetAnotherThreadIn.other_errors, _LetAnotherThreadIn.patience = [], patience
    counting = _CountFromTheParse()
    saved = builtins.compile, ast_guard._compile
    if guarded:  # the guard's lock around the counting compile
        ast_guard._compile = counting
    else:
        builtins.compile = counting
    try:
        for countdown in range(1, 16):
            counting.armed_with = countdown
            try:
                np.load(io.BytesIO(data))
            except SystemError as exc:
                errors.append(str(exc))
            finally:
                gc.set_threshold(*threshold)
                _LetAnotherThreadIn.countdown = -1
                while _LetAnotherThreadIn.others:  # done before the next point (or the next test)
                    _LetAnotherThreadIn.others.pop().join()
    finally:
        builtins.compile, ast_guard._compile = saved
        gc.set_threshold(*threshold)
        gc.enable()
    return errors + _LetAnotherThreadIn.other_errors


def test_the_guard_is_installed_by_importing_our_code() -> None:
    assert builtins.compile is compile_one_at_a_time


def test_threads_loading_arrays_at_once_do_not_break_each_others_parse() -> None:
    assert _interleaved_loads(guarded=True, patience=0.5) == []


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="the counter is per call from Python 3.13 on")
def test_without_the_guard_the_same_interleaving_fails() -> None:
    """The test above can fail: with the builtin compile, the interleaving breaks the parse."""
    errors = _interleaved_loads(guarded=False, patience=10.0)
    assert any("AST constructor recursion depth mismatch" in e for e in errors), errors


def test_compile_keeps_the_callers_future_features() -> None:
    """Without dont_inherit, compiled code inherits the caller's __future__ features, as
    with the builtin: here none (this module has no __future__ import), in a module with
    ``from __future__ import annotations`` that one."""
    plain = {}
    exec(compile("def f(x: int): pass", "<t>", "exec"), plain)
    assert plain["f"].__annotations__ == {"x": int}
    caller = compile("from __future__ import annotations\n"
                     "def compiled():\n"
                     "    ns = {}\n"
                     "    exec(compile('def f(x: int): pass', '<t>', 'exec'), ns)\n"
                     "    return ns['f'].__annotations__\n", "<caller>", "exec")
    namespace: dict = {}
    exec(caller, namespace)
    assert namespace["compiled"]() == {"x": "int"}


def test_a_fresh_process_of_ours_runs_with_the_guard() -> None:
    """The service's and the flow's packages install it on import, before Prefect."""
    code = ("import builtins, service.cli, prefect; "
            "print(getattr(builtins.compile, '__wrapped__', None) is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
