"""The one settings object of the service.

Loaded once at start from ``config/retrain.toml`` (or ``--config``), then overridden by
``RETRAIN_*`` environment variables, then by command-line flags. An invalid value stops
the program with one line naming the key, the value and what was expected.

Environment variables name a key with ``__`` between section and field:
``RETRAIN_EVALUATION__THRESHOLD=0.8``, ``RETRAIN_DASK__ADDRESS=tcp://host:8786``;
``RETRAIN_HOME`` and ``RETRAIN_CONFIG`` set the home folder and the config file.
Each value's origin is kept so that an error names the file or variable to fix.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.errors import ConfigError
from flows.specs import (
    DeploySpec,
    EvaluationSpec,
    ModelSpec,
    PipelineSpec,
    PreprocessSpec,
    SchemaSpec,
    WindowSpec,
)

ENV_PREFIX = "RETRAIN_"
DEFAULT_CONFIG = Path("config/retrain.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WatcherSpec(_Section):
    """How the inbox is watched and files are batched."""

    # "native": inotify (Linux) and friends; "polling": for NFS/CIFS, where inotify sees nothing.
    observer: Literal["native", "polling"] = "native"
    # A file is taken when its size and mtime have not changed for this long.
    settle_seconds: float = Field(2.0, ge=0.0)
    # After a writer closed the file (inotify close-after-write) it only has to stay unchanged this long.
    closed_settle_seconds: float = Field(0.1, ge=0.0)
    # A full scan of the inbox this often: events can be lost, a scan cannot.
    rescan_seconds: float = Field(5.0, gt=0.0)
    # Files claimed within this quiet window go into one run...
    batch_window_seconds: float = Field(0.5, ge=0.0)
    # ...but a batch never waits longer than this after its first file...
    max_batch_wait_seconds: float = Field(10.0, ge=0.0)
    # ...nor holds more files than this.
    max_batch_files: int = Field(1000, ge=1)
    # Files larger than this are quarantined unread.
    max_file_bytes: int = Field(2 * 1024**3, ge=1)
    # How often the daemon's loop wakes up to check readiness (seconds).
    tick_seconds: float = Field(0.05, gt=0.0, le=1.0)


class DaskSpec(_Section):
    """Where the tasks run."""

    # An existing scheduler, e.g. "tcp://10.0.0.5:8786". Empty: a local cluster.
    address: str | None = None
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    # Adaptive scaling of the local cluster between these bounds (0 = fixed size).
    adaptive_minimum: int = Field(0, ge=0)
    adaptive_maximum: int = Field(0, ge=0)
    dashboard_address: str | None = ":0"

    @field_validator("memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if value != "auto":
            from dask.utils import parse_bytes

            try:
                parse_bytes(value)
            except (ValueError, TypeError):
                raise ValueError("expected 'auto' or a size such as '4GiB' or '500MB'") from None
        return value

    @model_validator(mode="after")
    def _adaptive_bounds(self) -> "DaskSpec":
        if self.adaptive_maximum and self.adaptive_minimum > self.adaptive_maximum:
            raise ValueError(f"adaptive_minimum {self.adaptive_minimum} is above adaptive_maximum "
                             f"{self.adaptive_maximum}")
        return self


class DaemonSpec(_Section):
    """The daemon's own life."""

    # On SIGTERM/SIGINT, how long the current run may take before its files are handed back.
    grace_seconds: float = Field(30.0, ge=0.0)
    # A file whose runs fail (or whose runs the daemon dies in) this many times is quarantined.
    max_attempts: int = Field(3, ge=1)
    heartbeat_seconds: float = Field(1.0, gt=0.0)


class Settings(_Section):
    """Every setting of the service."""

    home: Path = Path("var")
    schema_: SchemaSpec = Field(default_factory=SchemaSpec, alias="schema")
    model: ModelSpec = Field(default_factory=ModelSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    window: WindowSpec = Field(default_factory=WindowSpec)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    watcher: WatcherSpec = Field(default_factory=WatcherSpec)
    dask: DaskSpec = Field(default_factory=DaskSpec)
    daemon: DaemonSpec = Field(default_factory=DaemonSpec)
    # Where the settings came from, for messages.
    source: str = "built-in defaults"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _pipeline_is_consistent(self) -> "Settings":
        self.pipeline()  # raises on a metric/estimator that does not fit the task
        return self

    def pipeline(self) -> PipelineSpec:
        """The part of the settings the flow takes as its parameter."""
        return PipelineSpec(
            schema=self.schema_,
            model=self.model,
            evaluation=self.evaluation,
            window=self.window,
            preprocess=self.preprocess,
            deploy=self.deploy,
        )


def load_settings(
    config_path: str | Path | None = None,
    home: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: file, then ``RETRAIN_*`` variables, then ``overrides``
    (dotted keys, e.g. ``{"dask.address": "tcp://..."}``), then ``home``.

    Without ``config_path`` (or ``RETRAIN_CONFIG``) the default ``config/retrain.toml``
    is used when it exists, else the built-in defaults.
    """
    environ = dict(os.environ if environ is None else environ)
    path = config_path or environ.get(f"{ENV_PREFIX}CONFIG")
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        data = _read_toml(Path(path))
        source = str(path)
    elif DEFAULT_CONFIG.is_file():
        data = _read_toml(DEFAULT_CONFIG)
        source = str(DEFAULT_CONFIG)

    origins: dict[str, str] = {}  # dotted key -> where its value came from, for messages
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in (f"{ENV_PREFIX}CONFIG", f"{ENV_PREFIX}HOME"):
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        _set_dotted(data, key, _parse_env_value(raw), origin=name)
        origins[key] = f"environment variable {name}"
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value, origin=f"--{key}")
            origins[key] = "command line"
    home = home if home is not None else environ.get(f"{ENV_PREFIX}HOME")
    if home is not None:
        data["home"] = str(home)
    data["source"] = source

    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, data, source, origins)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass --config with an existing file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from None


def _parse_env_value(raw: str) -> Any:
    """Lists and tables are JSON (``["id", "note"]``, ``{"max_iter": 200}``) and ``null``
    means "not set"; anything else stays text and is converted to the setting's type by
    validation, so ``RETRAIN_DEPLOY__HOOK_COMMAND=true`` is the command ``true``."""
    text = raw.strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            return raw
    if text.lower() == "null":
        return None
    return raw


def _set_dotted(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {part!r} is not a section; use a key like SECTION__FIELD")
        node = child
    node[parts[-1]] = value


def _describe_validation_error(exc: ValidationError, data: dict[str, Any], source: str,
                               origins: dict[str, str]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
    key = ".".join(loc) or "(top level)"
    source = origins.get(key, source)
    value: Any = data
    for part in loc:
        value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"config key {key!r} (in {source}) is not a known setting; remove it or check its spelling"
    if not loc:
        return f"config (in {source}): {message}"
    return f"config key {key!r} = {value!r} (in {source}): {message}"
