from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.specs import PipelineSpec
from service.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_equals_built_in_defaults(tmp_path: Path, monkeypatch) -> None:
    """config/retrain.toml documents the defaults: loading it changes nothing."""
    from_file = load_settings(REPO / "config" / "retrain.toml", environ={})
    monkeypatch.chdir(tmp_path)  # no config/retrain.toml here: the built-in defaults only
    defaults = load_settings(overrides={"schema.drop": ["customer_id"]}, environ={})
    assert from_file.model_dump() == defaults.model_dump()


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[evaluation]\nthreshold = 0.7\ntolerance = 0.01\n[dask]\nn_workers = 3\n')
    settings = load_settings(
        config, home=tmp_path / "h",
        overrides={"dask.address": "tcp://127.0.0.1:8786"},
        environ={"RETRAIN_EVALUATION__THRESHOLD": "0.9", "RETRAIN_WATCHER__OBSERVER": "polling",
                 "RETRAIN_SCHEMA__DROP": '["id", "note"]'},
    )
    assert settings.evaluation.threshold == 0.9  # env beats file
    assert settings.evaluation.tolerance == 0.01  # file beats default
    assert settings.dask.n_workers == 3
    assert settings.dask.address == "tcp://127.0.0.1:8786"  # flag
    assert settings.watcher.observer == "polling"
    assert settings.schema_.drop == ["id", "note"]
    assert settings.home == tmp_path / "h"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('home = "elsewhere"\n')
    assert load_settings(environ={"RETRAIN_CONFIG": str(config)}).home == Path("elsewhere")


@pytest.mark.parametrize("environ, expected", [
    ({"RETRAIN_EVALUATION__THRESHOLD": "high"}, "'evaluation.threshold' = 'high'"),
    ({"RETRAIN_MODEL__ESTIMATOR": "svm"}, "expected one of"),
    ({"RETRAIN_EVALUATION__HOLDOUT_FRACTION": "1.5"}, "'evaluation.holdout_fraction' = '1.5'"),
    ({"RETRAIN_WATCHER__OBSERVER": "magic"}, "'watcher.observer' = 'magic'"),
    ({"RETRAIN_THRESHOLD": "0.5"}, "'threshold'"),
    ({"RETRAIN_EVALUATION__METRIC": "rmse"}, "not a classification metric"),
    ({"RETRAIN_SCHEMA__TASK": "regression", "RETRAIN_MODEL__ESTIMATOR": "logistic_regression",
      "RETRAIN_EVALUATION__METRIC": "r2"}, "has no regression variant"),
    ({"RETRAIN_MODEL__FACTORY": "no_colon"}, "module:function"),
    ({"RETRAIN_DASK__MEMORY_LIMIT": "lots"}, "'dask.memory_limit' = 'lots'"),
    ({"RETRAIN_DASK__ADAPTIVE_MINIMUM": "3", "RETRAIN_DASK__ADAPTIVE_MAXIMUM": "2"},
     "adaptive_minimum 3 is above adaptive_maximum 2"),
    ({"RETRAIN_POLICY__SCHEDULE": "nightly"}, "'policy.schedule' = 'nightly'"),
    ({"RETRAIN_POLICY__TIMEZONE": "Mars/Olympus"}, "expected an IANA time zone"),
])
def test_invalid_values_fail_with_one_line(environ: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[schema\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[schema]\ntargte = 'y'\n")
    with pytest.raises(ConfigError, match="'schema.targte'.*not a known setting"):
        load_settings(unknown, environ={})


def test_regression_defaults_follow_the_task() -> None:
    settings = load_settings(environ={"RETRAIN_SCHEMA__TASK": "regression",
                                      "RETRAIN_SCHEMA__TARGET": "monthly_spend"})
    assert settings.pipeline().evaluation.metric_for("regression") == "r2"


def test_environment_values_take_the_setting_type() -> None:
    settings = load_settings(environ={"RETRAIN_DEPLOY__HOOK_COMMAND": "true",
                                      "RETRAIN_DEPLOY__RETRIES": "5",
                                      "RETRAIN_MODEL__PARAMS": '{"max_iter": 50}',
                                      "RETRAIN_DASK__DASHBOARD_ADDRESS": "null"})
    assert settings.deploy.hook_command == "true"
    assert settings.deploy.retries == 5
    assert settings.model.params == {"max_iter": 50}
    assert settings.dask.dashboard_address is None


def test_cluster_flags_override_the_dask_section(tmp_path: Path) -> None:
    from service.cli import build_parser
    from service.cli.base import cluster_overrides

    args = build_parser().parse_args(["watch", "--workers", "3", "--threads-per-worker", "2",
                                      "--memory-limit", "2GiB", "--adapt", "1:4"])
    settings = load_settings(home=tmp_path, overrides=cluster_overrides(args), environ={})
    dask = settings.dask
    assert (dask.n_workers, dask.threads_per_worker, dask.memory_limit) == (3, 2, "2GiB")
    assert (dask.adaptive_minimum, dask.adaptive_maximum) == (1, 4)
    assert dask.address is None


@pytest.mark.parametrize("argv", [["--home", "/srv/h", "-v", "run", "f.csv"],
                                  ["run", "--home", "/srv/h", "-v", "f.csv"],
                                  ["--home", "/elsewhere", "run", "--home", "/srv/h", "-v", "f.csv"]])
def test_common_options_are_taken_before_or_after_the_command(argv: list[str]) -> None:
    from service.cli import parse_args

    args = parse_args(argv)
    assert (args.home, args.verbose, args.log_format, args.files) == ("/srv/h", True, "plain", ["f.csv"])
    assert parse_args(["status"]).home is None


@pytest.mark.parametrize("bounds", ["4:1", "x:2", "3", "0:0"])
def test_bad_adapt_bounds_are_a_usage_error(bounds: str, capsys) -> None:
    from service.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "f.csv", "--adapt", bounds])
    assert info.value.code == 2
    assert "expected MIN:MAX" in capsys.readouterr().err


def test_pipeline_sections_are_declared_once() -> None:
    """Settings takes the pipeline's sections from PipelineSpec, and pipeline() hands the
    same section objects to the flow."""
    assert issubclass(Settings, PipelineSpec)
    for name, field in PipelineSpec.model_fields.items():
        assert Settings.model_fields[name].annotation is field.annotation
    settings = load_settings(environ={"RETRAIN_EVALUATION__THRESHOLD": "0.75"})
    pipeline = settings.pipeline()
    assert isinstance(pipeline, PipelineSpec)
    assert pipeline.evaluation is settings.evaluation and pipeline.evaluation.threshold == 0.75
    assert pipeline.schema_ is settings.schema_


def test_given_environment_replaces_the_process_environment(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith("RETRAIN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RETRAIN_EVALUATION__THRESHOLD", "0.9")
    monkeypatch.setenv("RETRAIN_NOT_A_SETTING", "1")
    assert load_settings(environ={}).evaluation.threshold == 0.6
    monkeypatch.delenv("RETRAIN_NOT_A_SETTING")
    assert load_settings().evaluation.threshold == 0.9


def test_home_from_flag_then_environment_then_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('home = "from-file"\n')
    assert load_settings(config, environ={}).home == Path("from-file")
    environ = {"RETRAIN_HOME": "from-env"}
    assert load_settings(config, environ=environ).home == Path("from-env")
    assert load_settings(config, home="from-flag", environ=environ).home == Path("from-flag")


@pytest.mark.parametrize("environ, overrides, expected", [
    ({"RETRAIN_EVALUATION__THRESHLD": "0.5"}, {},
     "config key 'evaluation.threshld' (in environment variable RETRAIN_EVALUATION__THRESHLD) "
     "is not a known setting"),
    ({"RETRAIN_NOPE__THRESHOLD": "0.5"}, {},
     "config key 'nope' (in environment variable RETRAIN_NOPE__THRESHOLD) is not a known setting"),
    ({"RETRAIN_SCHEMA__DROP": "id"}, {},
     "config key 'schema.drop' = 'id' (in environment variable RETRAIN_SCHEMA__DROP): "
     "Input should be a valid list"),
    ({"RETRAIN_SCHEMA__DROP": '["id", 3]'}, {},
     "config key 'schema.drop.1' = 3 (in environment variable RETRAIN_SCHEMA__DROP)"),
    ({"RETRAIN_MODEL": '{"random_state": "x"}'}, {},
     "config key 'model.random_state' = 'x' (in environment variable RETRAIN_MODEL)"),
    ({}, {"dask.n_workers": 0}, "config key 'dask.n_workers' = 0 (in command line)"),
    ({"RETRAIN_EVALUATION__METRIC": "rmse"}, {},
     "config (in environment variable RETRAIN_EVALUATION__METRIC): evaluation.metric 'rmse'"),
])
def test_errors_name_key_value_and_origin(environ: dict, overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides=overrides, environ=environ)
    assert expected in str(info.value)


def test_a_rule_across_keys_names_the_origin_of_each(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[dask]\nadaptive_maximum = 2\nn_workers = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={"RETRAIN_DASK__ADAPTIVE_MINIMUM": "3"})
    assert str(info.value) == (
        f"config key 'dask' (in {config}, environment variable RETRAIN_DASK__ADAPTIVE_MINIMUM): "
        "adaptive_minimum 3 is above adaptive_maximum 2")


def test_file_values_are_named_by_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[evaluation]\nthreshold = "high"\n')
    with pytest.raises(ConfigError, match=rf"'evaluation.threshold' = 'high' \(in {config}\)"):
        load_settings(config, environ={})


def test_variables_merge_into_sections_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[schema]\ntarget = "y"\ndrop = ["id"]\n[model]\nparams = {max_iter = 5}\n')
    settings = load_settings(config, environ={"RETRAIN_SCHEMA__TASK": "regression",
                                              "RETRAIN_SCHEMA__CATEGORICAL": "null",
                                              "RETRAIN_MODEL__ESTIMATOR": "ridge"})
    assert (settings.schema_.target, settings.schema_.task, settings.schema_.drop) == ("y", "regression", ["id"])
    assert settings.schema_.categorical is None
    assert (settings.model.estimator, settings.model.params) == ("ridge", {"max_iter": 5})
