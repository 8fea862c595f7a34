"""One thread at a time turns source into ``ast`` objects, in every process of ours.

Why: CPython 3.11 keeps the depth counter of its AST-object constructor (``ast2obj``) once
per interpreter, not per thread (python/cpython#106905). A garbage collection during the
construction can run a finalizer that lets another thread in; that thread resets the
shared counter to its own stack depth, and the first one then ends with "SystemError: AST
constructor recursion depth mismatch (before=147, after=142)". numpy parses every ``.npy``
header with ``ast.literal_eval``, and skops loads a model's arrays through numpy, so two
threads loading models at once (the tasks of ``retrain run``'s in-process cluster, a
worker's threads, the model server's threads) failed about one run in six on real data;
Prefect's docstring parser (griffe) and dask's config parsing go through the same code.

The fix: every compile to an AST (``ast.parse``, ``ast.literal_eval``, and any direct
``compile(..., ast.PyCF_ONLY_AST)``) holds one process-wide lock. It is installed on
``builtins.compile`` (a Python wrapper around the C builtin) because that is the one door
every such call passes through; wrapping ``ast.parse`` alone would miss libraries that
call ``compile`` themselves. No library offers this, hence our own ~30 lines.

The wrapper keeps ``compile``'s one frame-dependent behaviour: without ``dont_inherit``,
compiled code inherits the ``__future__`` features of the code that calls ``compile``, so
the caller's features are passed on explicitly (this module must therefore not use any
``from __future__`` import itself).

Not covered (and not seen): a finalizer that itself parses, run by a garbage collection
inside a parse of the same thread; the lock cannot tell such a nested call apart, and
letting it in (a reentrant lock) is better than a deadlock.
"""

import __future__

import ast
import builtins
import sys
import threading

_LOCK = threading.RLock()
# The compiler flags of every __future__ feature: what a caller's code object can carry.
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag


def _builtin_compile():
    return getattr(builtins.compile, "__wrapped__", builtins.compile)


_compile = _builtin_compile()


def compile_one_at_a_time(source, filename, mode, flags=0, dont_inherit=False, optimize=-1,
                          **kwargs):
    """``compile``, holding the process-wide lock when it builds AST objects."""
    if not dont_inherit:  # as the builtin would: the caller's __future__ features
        flags |= sys._getframe(1).f_code.co_flags & _FUTURE_FLAGS
    if flags & ast.PyCF_ONLY_AST:
        with _LOCK:
            return _compile(source, filename, mode, flags, True, optimize, **kwargs)
    return _compile(source, filename, mode, flags, True, optimize, **kwargs)


compile_one_at_a_time.__wrapped__ = _compile
compile_one_at_a_time.__doc__ = f"{compile_one_at_a_time.__doc__}\n\n{_compile.__doc__}"


def serialize_ast_construction() -> None:
    """Install the lock for this whole process (idempotent). Done when ``core`` is first
    imported, so before Prefect (griffe keeps a reference to ``compile`` from its import)."""
    if getattr(builtins.compile, "__wrapped__", None) is not _compile:
        builtins.compile = compile_one_at_a_time
