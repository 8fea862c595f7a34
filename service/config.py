"""The one settings object of the service.

``Settings`` is a pydantic-settings ``BaseSettings`` whose sources are, highest first:
command-line flags, ``RETRAIN_*`` environment variables, the TOML file (``--config``,
``RETRAIN_CONFIG``, or ``config/retrain.toml`` when present), the built-in defaults.
``load_settings`` is the entry point: an invalid value stops the program with one line
naming the key, the value, where it came from and what was expected.

Environment variables name a key with ``__`` between section and field:
``RETRAIN_EVALUATION__THRESHOLD=0.8``, ``RETRAIN_DASK__ADDRESS=tcp://host:8786``; lists and
tables are JSON (``RETRAIN_SCHEMA__DROP='["id"]'``) and ``null`` means "not set".
``RETRAIN_HOME`` and ``RETRAIN_CONFIG`` set the home folder and the config file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from core.errors import ConfigError
from core.specs import PipelineSpec

ENV_PREFIX = "RETRAIN_"
ENV_DELIMITER = "__"
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
DEFAULT_CONFIG = Path("config/retrain.toml")
_BUILT_IN = "built-in defaults"


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
    # `retrain run` without a daemon: a local cluster of threads in its own process (no
    # worker processes to start for a one-shot batch). The daemon always starts processes.
    run_in_process: bool = True

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
    # Prometheus metrics of the daemon (files, runs, deployments, queue) on this port; 0 = off.
    metrics_port: int = Field(0, ge=0, le=65535)
    # The address the metrics port listens on; "0.0.0.0" lets a Prometheus on another host scrape it.
    metrics_host: str = "127.0.0.1"
    # The embedded Prefect API deletes flow runs (their task runs, logs, artifacts) that
    # ended longer ago than this; the ledger keeps every run.
    prefect_history_days: float = Field(30.0, ge=1.0)
    # The daemon's embedded Prefect API serves Prefect's UI at this address (its API at
    # /api); when the port is taken, a free one, named in the log. false: no UI.
    prefect_ui: bool = True
    prefect_ui_host: str = "127.0.0.1"
    prefect_ui_port: int = Field(4200, ge=0, le=65535)


class ServeSpec(_Section):
    """``retrain serve``: the HTTP prediction server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Server processes; above 1, requests are spread over them and /metrics adds up all of them.
    workers: int = Field(1, ge=1)
    # A request with more rows is refused (413): split the rows over several requests.
    max_rows_per_request: int = Field(100_000, ge=1)
    # A larger body is refused (413) as soon as its size is known, before it is read whole.
    max_body_bytes: int = Field(64 * 1024**2, ge=1)
    # Micro-batching: requests arriving together go through one model call of at most this
    # many rows (a larger request goes alone, never split); 1 turns batching off.
    max_batch_rows: int = Field(1024, ge=1)
    # How long a batch may wait for requests already on their way (a lone request never waits).
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    # Every answer (its id, version, time, outputs and features) also goes to the home's
    # prediction log, so that late labels dropped into labels/ are joined with served
    # predictions as with scored batches (the production metric).
    log_predictions: bool = False


class MlflowSpec(_Section):
    """Optional export of model versions to MLflow (``pip install 'retrain[mlflow]'``);
    retrain's own registry stays the registry of record."""

    # "" (the default) is off; e.g. "http://127.0.0.1:5000" or "sqlite:///mlflow.db".
    tracking_uri: str = ""
    # Registry of the registered model; "" = the tracking URI.
    registry_uri: str = ""
    # The MLflow registered model whose alias `champion` follows retrain's `current`.
    model_name: str = Field("retrain", min_length=1)
    experiment: str = Field("retrain", min_length=1)
    # Also log every candidate the gate refused (as runs and model versions without the alias).
    log_candidates: bool = False
    # A failed export is retried after this long (doubling up to 10 minutes) while the process lives,
    # and at the next run in any case.
    retry_seconds: float = Field(30.0, gt=0)
    # Each MLflow request gives up after this long (MLflow's own default is 120 s and 7 retries).
    request_timeout_seconds: float = Field(10.0, gt=0)


class RegistrySpec(_Section):
    """How much model history is kept on disk."""

    # The newest N versions are kept; older ones are removed (a line in the ledger keeps their
    # metrics and decision). `current`, the previous deployed version (the rollback target)
    # and the versions in `protect` are never removed, whatever N is.
    keep_versions: int = Field(50, ge=1)
    protect: list[str] = Field(default_factory=list)


class ArchiveSpec(_Section):
    """How long archived data files are kept."""

    # 0: forever (archived CSVs are the data). N: files archived more than N days ago that are
    # no longer in the training window are deleted.
    keep_days: float = Field(0.0, ge=0.0)


@dataclass
class _Layers:
    """What one load reads besides the defaults, and where each value it found came from."""

    config_file: Path | None
    environ: Mapping[str, str]
    # Dotted key -> origin, noted by the highest source that gave the key.
    origins: dict[str, str] = field(default_factory=dict)

    @classmethod
    def choose(cls, config_path: str | Path | None, environ: Mapping[str, str]) -> "_Layers":
        path = config_path or environ.get(CONFIG_VARIABLE)
        if path is None:
            return cls(DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None, environ)
        if not Path(path).is_file():
            # The TOML source skips a missing file silently; a file the user named must exist.
            raise ConfigError(f"config file {path} does not exist; pass --config with an existing file")
        return cls(Path(path), environ)


# The layers of the load in progress. settings_customise_sources is a class method called
# by BaseSettings.__init__ with no way to pass it a file or an environment, so
# load_settings hands them over here for the duration of one construction.
_LOADING: ContextVar[_Layers | None] = ContextVar("retrain_settings_layers", default=None)


class Settings(BaseSettings, PipelineSpec):
    """Every setting of the service: the pipeline's sections (declared once, in
    ``core.specs.PipelineSpec``) and the service's own.

    Built directly, it reads ``os.environ`` and the default file like any ``BaseSettings``;
    ``load_settings`` chooses the file and environment and turns errors into one line.
    """

    home: Path = Path("var")
    watcher: WatcherSpec = Field(default_factory=WatcherSpec)
    dask: DaskSpec = Field(default_factory=DaskSpec)
    daemon: DaemonSpec = Field(default_factory=DaemonSpec)
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    archive: ArchiveSpec = Field(default_factory=ArchiveSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)

    model_config = SettingsConfigDict(
        extra="forbid",
        # Sections by their key only (`schema`, not also the attribute name `schema_`): two
        # spellings of one section from two sources would not be merged.
        populate_by_name=False,
        validate_by_name=False,
        env_prefix=ENV_PREFIX,
        # The prefix applies to aliases too: the `schema` section is RETRAIN_SCHEMA__*.
        env_prefix_target="all",
        env_nested_delimiter=ENV_DELIMITER,
        # A variable set to `null` means "not set" (None), e.g. RETRAIN_DASK__DASHBOARD_ADDRESS=null.
        env_parse_none_str="null",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers = _LOADING.get() or _Layers.choose(None, os.environ)
        file_origin = str(layers.config_file)
        return (
            _Traced(init_settings, lambda key: "command line", layers.origins),
            _Traced(_Environment(settings_cls, layers.environ), _variable_naming(layers.environ),
                    layers.origins),
            _Traced(_ConfigFile(settings_cls, layers.config_file), lambda key: file_origin,
                    layers.origins),
        )

    def pipeline(self) -> PipelineSpec:
        """The part of the settings the flow takes as its parameter (the same section objects)."""
        return PipelineSpec(**{name: getattr(self, name) for name in PipelineSpec.model_fields})


def load_settings(
    config_path: str | Path | None = None,
    home: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults, then the file, then ``RETRAIN_*`` variables (from
    ``environ``, else the process environment), then ``overrides`` (dotted keys, e.g.
    ``{"dask.address": "tcp://..."}``; None means "not given"), then ``home``.

    Without ``config_path`` (or ``RETRAIN_CONFIG``) the default ``config/retrain.toml``
    is used when it exists, else the built-in defaults.
    """
    layers = _Layers.choose(config_path, os.environ if environ is None else environ)
    flags: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(flags, key.split("."), value)
    if home is not None:
        flags["home"] = str(home)
    with _loading(layers):
        try:
            return Settings(**flags)
        except ValidationError as exc:
            raise ConfigError(_describe(exc.errors()[0], layers.origins)) from None


@contextmanager
def _loading(layers: _Layers) -> Iterator[None]:
    token = _LOADING.set(layers)
    try:
        yield
    finally:
        _LOADING.reset(token)


class _Environment(EnvSettingsSource):
    """``RETRAIN_*`` variables of a given mapping (a test's dict, or ``os.environ``)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        # Text that is not JSON stays text, so validation reports the key, the value and the
        # expected type; the library would raise a bare "error parsing value" instead.
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        # The library ignores a variable naming no field (RETRAIN_THRESHOLD); passing it on
        # makes validation reject it as an unknown key, like an unknown key in the file.
        known = {(info.alias or name).lower() for name, info in self.settings_cls.model_fields.items()}
        for name, value in self.env_vars.items():
            parts = _variable_key(name)
            if parts and parts[0] not in known:
                _set_dotted(data, parts, value)
        return data


class _ConfigFile(TomlConfigSettingsSource):
    """The TOML file, with a one-line error for broken syntax."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML ({exc}); fix the syntax") from None


class _Traced(PydanticBaseSettingsSource):
    """Passes a source's values on and notes where each came from: pydantic-settings merges
    its sources without keeping that, and an error must name the file or variable to fix."""

    def __init__(self, source: PydanticBaseSettingsSource, origin: Callable[[str], str],
                 origins: dict[str, str]):
        super().__init__(source.settings_cls)
        self.source, self.origin, self.origins = source, origin, origins

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ asks the wrapped source

    def __call__(self) -> dict[str, Any]:
        values = self.source()
        for key in _leaf_keys(values):
            self.origins.setdefault(key, self.origin(key))
        return values


def _variable_key(name: str) -> list[str]:
    """``retrain_dask__address`` -> ``["dask", "address"]``; [] for other variables."""
    name = name.lower()
    if not name.startswith(ENV_PREFIX.lower()) or name == CONFIG_VARIABLE.lower():
        return []
    return name[len(ENV_PREFIX):].split(ENV_DELIMITER)


def _variable_naming(environ: Mapping[str, str]) -> Callable[[str], str]:
    """dotted key -> "environment variable RETRAIN_...": the variable giving the key, or the
    one giving a whole table around it (``RETRAIN_MODEL__PARAMS='{"max_iter": 5}'``)."""
    names = {".".join(_variable_key(name)): name for name in environ if _variable_key(name)}

    def origin(key: str) -> str:
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in names:
                return f"environment variable {names['.'.join(parts[:end])]}"
        return "the environment"

    return origin


def _leaf_keys(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part!r} is not a section; use a key like SECTION.FIELD")
        node = child
    node[parts[-1]] = value


def _describe(error: Mapping[str, Any], origins: Mapping[str, str]) -> str:
    """One line for a validation error: key, value, origin, what was expected."""
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    message = error["msg"].removeprefix("Value error, ")
    origin = _origin_of(key, message, origins)
    if error["type"] == "extra_forbidden":
        return f"config key {key!r} (in {origin}) is not a known setting; remove it or check its spelling"
    where = f"config key {key!r}" if loc else "config"
    if not isinstance(error["input"], Mapping):  # a whole section's value would say nothing more
        where += f" = {error['input']!r}"
    return f"{where} (in {origin}): {message}"


def _origin_of(key: str, message: str, origins: Mapping[str, str]) -> str:
    """Where ``key`` came from. A rule across keys (a section's, or the whole config's) names
    the keys it compares in its message, so their origins are the ones to fix; a list element
    or a key of a table given whole comes from where the list or table came from."""
    if key in origins:
        return origins[key]
    inside = {k.removeprefix(f"{key}."): o for k, o in origins.items() if not key or k.startswith(f"{key}.")}
    named = {o for k, o in inside.items() if re.search(rf"\b{re.escape(k)}\b", message)}
    if named or inside:
        return ", ".join(sorted(named or set(inside.values())))
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in origins:
            return origins[".".join(parts[:end])]
    return _BUILT_IN
