"""The registry: numbered versions, the atomic `current` switch, safe loading, the lease."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import pytest
import skops.io as sio
from flow_fixtures import (
    load_unchecked,
    register,
    registry_of,
)

from core.errors import (
    DeployError,
    ModelNotFoundError,
    RegistryIntegrityError,
)
from core.files import sha256_file
from flows.models.modelfile import MODEL_FILE, load_model_file
from flows.models.registry import ModelRegistry


def test_versions_are_numbered_and_current_switches(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current() is None and registry.versions() == []
    v1 = register(registry, str(model), roc_auc=0.8)
    v2 = register(registry, str(model), "rejected", roc_auc=0.7)
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert registry.promote("v0001") is None
    assert registry.promote("v0002") == "v0001" and registry.current().version == "v0002"
    assert registry.get("v0001").model_sha256 == sha256_file(model)
    with pytest.raises(ModelNotFoundError, match="no model version 'v0009'; known versions: v0001, v0002"):
        registry.get("v0009")
    # Rolling back without a name goes to the newest earlier *deployed* version.
    assert registry.rollback_to() == ("v0002", "v0001")
    with pytest.raises(ModelNotFoundError, match="no earlier deployed version"):
        registry.rollback_to()


def test_half_written_versions_are_never_visible_and_get_cleaned(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 1)
    registry.promote("v0001")
    # What a killed writer leaves behind: a staged directory, a dangling temporary link,
    # a version directory without metadata.
    (registry.staging / "v0002-deadbeef").mkdir(parents=True)
    (registry.staging / "v0002-deadbeef" / MODEL_FILE).write_bytes(b"partial")
    (registry.root / ".current-12345678").symlink_to("v0002")
    (registry.root / "v0003").mkdir()
    assert [v.version for v in registry.versions()] == ["v0001"]
    removed = registry.clean_staging()
    assert set(removed) == {"v0002-deadbeef", ".current-12345678", "v0003"}
    assert registry.current_version() == "v0001"
    assert register(registry, str(model)).version == "v0002"


def test_readers_never_see_a_missing_or_partial_current(tmp_path: Path, trained) -> None:
    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.promote("v0001")
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        reader = ModelRegistry(registry.root)
        while not stop.is_set():
            try:
                seen.add(reader.current().version)
            except Exception as exc:  # any failure to read is the bug this test looks for
                errors.append(repr(exc))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(300):
        registry.promote("v0002" if i % 2 == 0 else "v0001")
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == [] and seen == {"v0001", "v0002"}


class _Exploit:
    """Writes a marker file when loaded (by pickle or by skops): stands for arbitrary code
    in a model file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("executed")


def test_pickle_payload_in_a_model_file_is_refused_without_running(tmp_path: Path, trained) -> None:
    model, _ = trained
    marker = tmp_path / "pwned"
    registry = ModelRegistry(tmp_path / "registry")
    version = register(registry, str(model)).version
    target = registry.root / version / MODEL_FILE

    # 1. The model file replaced by a pickle: the checksum refuses it first...
    target.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(RegistryIntegrityError, match="does not match its recorded sha256"):
        registry.load_model(version)
    # ...and a pickle is not a skops file even when the checksum is bypassed.
    with pytest.raises(RegistryIntegrityError, match="not a readable skops model file"):
        load_unchecked(target)

    # 2. A well-formed skops file that carries an object whose loading runs code.
    forged = load_unchecked(model)
    forged.exploit = _Exploit(str(marker))
    forged_path = tmp_path / "forged.skops"
    sio.dump(forged, forged_path)
    with pytest.raises(RegistryIntegrityError, match=f"not trusted.*{__name__}._Exploit"):
        load_unchecked(forged_path)
    with pytest.raises(RegistryIntegrityError, match="not trusted"):
        load_model_file(forged_path, sha256_file(forged_path))
    assert not marker.exists()
    # The forgery is real: a loader that trusts whatever the file lists runs the payload.
    sio.load(forged_path, trusted=sio.get_untrusted_types(file=forged_path))
    assert marker.read_text() == "executed"




def test_only_the_lease_holder_switches_current(tmp_path: Path, trained) -> None:
    from flows.models.deploy import switch_current

    model, _ = trained
    registry = registry_of(tmp_path / "registry", model, 2)
    registry.take_lease("run-a")
    assert switch_current(registry, "v0001", "run-a") is None
    registry.take_lease("run-b")  # a later run took over
    with pytest.raises(DeployError, match="run-a no longer holds the registry"):
        switch_current(registry, "v0002", "run-a")
    registry.release_lease()  # the daemon stopped
    with pytest.raises(DeployError, match=r"\(lease: released\)"):
        switch_current(registry, "v0002", "run-b")
    assert registry.current_version() == "v0001"
