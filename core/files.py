"""File primitives shared by every step that writes durably or names content.

``write_atomically`` is the one way a file that readers can observe is written or switched:
a unique temporary name in the same folder, fsync of the file, ``os.replace``, fsync of the
folder. A reader (or a power cut) sees the old file or the new one, complete, never a mix.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, content: bytes | str | Callable[[BinaryIO], None],
                     durable: bool = True) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function that writes into the open
    binary file) to ``path`` so that readers only ever see a complete file. The temporary
    name is unique: two writers of the same path (two workers building the same cache
    entry) never write into one file. ``durable=False`` skips the fsyncs, for files that
    are rewritten every second and worthless after a power cut (a heartbeat)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def switch_link(link: str | Path, target: str) -> None:
    """Point the symbolic link ``link`` at ``target`` atomically (``ln -sfn`` is not: it
    removes the old link first). A temporary link is made, then renamed over the old one."""
    link = Path(link)
    fd, tmp = tempfile.mkstemp(prefix=f".{link.name}-", dir=link.parent)
    os.close(fd)
    os.unlink(tmp)  # the unique name is kept for the link
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
