"""The model registry: immutable versions and an atomically switched ``current``.

Layout under the registry root::

    v0001/model.skops      the fitted Pipeline (skops: loading runs no code), or
    v0001/model.ubj        an XGBoost model (XGBoost's UBJSON: loading runs no code)
    v0001/metadata.json    ModelVersion: metrics, decision, lineage, config, versions
    current                symlink -> v0001, switched with os.replace of a temporary link
    .staging/              half-written versions; never visible, removed at start

A version directory appears only by an atomic rename of a complete, fsynced directory,
so readers never see a half-written version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import ModelNotFoundError, RegistryIntegrityError
from core.files import fsync_dir, fsync_file, sha256_file, switch_link, write_atomically
from core.records import ModelVersion
from flows.models.modelfile import ModelFile, model_file_name

METADATA_FILE = "metadata.json"
LEASE_FILE = ".lease"
_VERSION = re.compile(r"^v(\d{4,})$")


class ModelRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = self.root / ".staging"

    # -- writing --------------------------------------------------------------------------
    def staging_path(self, name: str) -> Path:
        """A path under .staging/ for a candidate model file being written."""
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / name

    def register(self, model_file: str | Path, metadata: dict[str, Any],
                 version: str | None = None) -> ModelVersion:
        """Move the staged model into a new version directory with its metadata; the
        directory becomes visible complete, by one rename. ``metadata["model_sha256"]`` is
        the hash the model was checked against when it was evaluated; it is what every
        later load verifies. ``version``: the number to take (the run announced it as its
        asset before registering); without it, the next free one."""
        model_file = Path(model_file)
        name = model_file_name(model_file)
        self.staging.mkdir(parents=True, exist_ok=True)
        wanted = version
        while True:
            version = wanted or self.next_version()
            work = self.staging / f"{version}-{uuid.uuid4().hex[:8]}"
            work.mkdir()
            if model_file.parent == self.staging:
                os.replace(model_file, work / name)
            else:
                shutil.copyfile(model_file, work / name)
            fsync_file(work / name)
            record = ModelVersion(
                version=version, path=str(self.root / version), model_file=name,
                created_at=metadata.get("created_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                model_sha256=metadata.get("model_sha256") or sha256_file(work / name),
                **{k: v for k, v in metadata.items()
                   if k not in ("version", "path", "created_at", "model_sha256", "model_file")},
            )
            self._write_metadata(work, record)
            fsync_dir(work)
            try:
                os.rename(work, self.root / version)  # fails if another writer took the number
            except OSError:
                if wanted:  # the staged copy stays in .staging/, removed at the next start
                    raise RegistryIntegrityError(f"model version {wanted} already exists; only "
                                                 "one run at a time may register") from None
                model_file = work / name
                continue
            fsync_dir(self.root)
            return record

    def next_version(self) -> str:
        """The number the next registered version takes."""
        numbers = [number for number, _ in self._version_folders(complete=False)]
        return f"v{max(numbers, default=0) + 1:04d}"

    def _write_metadata(self, folder: Path, record: ModelVersion) -> None:
        write_atomically(folder / METADATA_FILE,
                         json.dumps(record.model_dump(), indent=2, default=str) + "\n")

    def update(self, version: str, **fields: Any) -> ModelVersion:
        """Rewrite metadata.json of a version atomically."""
        record = self.get(version).model_copy(update=fields)
        self._write_metadata(self.root / version, record)
        return record

    # -- reading --------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first."""
        return [self._read(folder.name) for _, folder in sorted(self._version_folders())]

    def latest(self) -> ModelVersion | None:
        """The newest complete version (names are listed, one metadata file is read)."""
        newest = max(self._version_folders(), default=None)
        return self._read(newest[1].name) if newest else None

    def _version_folders(self, complete: bool = True) -> list[tuple[int, Path]]:
        """(number, folder) of every version folder; ``complete``: only those with their
        metadata written (a folder without it is a crash's leftover, removed at start)."""
        found = []
        for folder in self.root.iterdir():
            match = _VERSION.match(folder.name)
            if match and folder.is_dir() and (not complete or (folder / METADATA_FILE).is_file()):
                found.append((int(match.group(1)), folder))
        return found

    def _read(self, version: str) -> ModelVersion:
        data = json.loads((self.root / version / METADATA_FILE).read_text())
        data["path"] = str(self.root / version)  # the registry may have moved since
        return ModelVersion.model_validate(data)

    def get(self, version: str) -> ModelVersion:
        if not _VERSION.match(version) or not (self.root / version / METADATA_FILE).is_file():
            known = ", ".join(v.version for v in self.versions()) or "none yet"
            raise ModelNotFoundError(f"no model version {version!r}; known versions: {known}")
        return self._read(version)

    def current_version(self) -> str | None:
        try:
            return os.readlink(self.root / "current")
        except (FileNotFoundError, OSError):
            return None

    def switched_at(self) -> float | None:
        """When ``current`` last changed (a deploy or a rollback): the link is replaced,
        never modified, so its own mtime is the time of the switch."""
        try:
            return os.lstat(self.root / "current").st_mtime
        except FileNotFoundError:
            return None

    def current(self) -> ModelVersion | None:
        version = self.current_version()  # read the link once: a switch cannot split this read
        return self.get(version) if version else None

    # -- switching --------------------------------------------------------------------------
    def promote(self, version: str) -> str | None:
        """Point ``current`` at ``version`` atomically. Returns the previous current version."""
        self.get(version)
        previous = self.current_version()
        switch_link(self.root / "current", version)
        return previous

    def unset_current(self) -> None:
        (self.root / "current").unlink(missing_ok=True)
        fsync_dir(self.root)

    def rollback_to(self, version: str | None = None) -> tuple[str | None, str]:
        """Back to ``version``, or to the newest deployed version older than current.
        Returns (old current, new current)."""
        old = self.current_version()
        if version is None:
            version = self.rollback_target()
            if version is None:
                raise ModelNotFoundError("there is no earlier deployed version to roll back to; "
                                         "name one: retrain models rollback VERSION")
        self.promote(version)
        return old, version

    # -- the deploy lease ---------------------------------------------------------------
    # One run at a time may switch ``current``: the run that holds the lease. A run takes it
    # when it starts; a daemon that stops (or restarts after a crash) releases it. A deploy
    # task that outlived its run on a shared Dask cluster then finds the lease gone and
    # does not switch anything.
    def take_lease(self, holder: str) -> None:
        write_atomically(self.root / LEASE_FILE, holder)

    def release_lease(self) -> None:
        (self.root / LEASE_FILE).unlink(missing_ok=True)

    def lease_holder(self) -> str | None:
        try:
            return (self.root / LEASE_FILE).read_text() or None
        except FileNotFoundError:
            return None

    def model_file(self, version: str) -> ModelFile:
        """A version's model file, with the sha256 recorded in its metadata."""
        record = self.get(version)
        return ModelFile(str(self.root / version / record.model_file), record.model_sha256, f"model {version}")

    # -- retention -------------------------------------------------------------------------
    def rollback_target(self, versions: list[ModelVersion] | None = None) -> str | None:
        """The newest deployed version older than current (any, when nothing is current):
        where a rollback goes."""
        current = self.current_version()
        older = [v for v in (versions or self.versions()) if v.decision == "deployed"
                 and (current is None or int(v.version[1:]) < int(current[1:]))]
        return older[-1].version if older else None

    def prune(self, keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[ModelVersion]:
        """Remove all but the newest ``keep`` versions; never ``current``, the rollback
        target or ``protect``. Returns the removed records, for the caller to keep a line of
        each. A version leaves by one rename into .staging/ (readers see it whole or not at
        all), then is deleted; a crash in between is cleaned by ``clean_staging``. With the
        registry kept at about ``keep`` versions, the work is bounded."""
        versions = self.versions()
        spared = {v.version for v in versions[-keep:]} | set(protect) | {
            self.current_version(), self.rollback_target(versions)}
        removed = []
        for record in versions:
            if record.version in spared:
                continue
            self.staging.mkdir(parents=True, exist_ok=True)
            doomed = self.staging / f"removed-{record.version}-{uuid.uuid4().hex[:8]}"
            os.rename(self.root / record.version, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(record)
        if removed:
            fsync_dir(self.root)
        return removed

    def load_model(self, version: str, trusted_types: list[str] | None = None):
        """Load a version's model after checking its sha256 against the metadata (the
        only way a registered model is loaded)."""
        return self.model_file(version).load(trusted_types)

    def clean_staging(self) -> list[str]:
        """Remove half-written entries (crash leftovers); returns what was removed."""
        removed = []
        if self.staging.exists():
            for entry in self.staging.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry.name)
        for entry in self.root.iterdir():
            if entry.name.startswith((".current-", ".lease-", f".{LEASE_FILE}.")):
                entry.unlink()
                removed.append(entry.name)
        for _, folder in self._version_folders(complete=False):
            if not (folder / METADATA_FILE).exists():
                shutil.rmtree(folder)
                removed.append(folder.name)
        return removed
