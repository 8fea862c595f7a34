# One entry point for people and CI. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# MLflow pins pyarrow below 26: its tests and the peer benchmark get a venv of their own.
MLFLOW_VENV  := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1

.PHONY: install run test test-mlflow faults bench bench-quick bench-serve bench-serve-peer bench-cluster bench-deployment bench-run-command bench-production bench-real-data scenarios soak soak-cluster soak-quick server clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: start the daemon on config/retrain.toml (home: var/)
run: $(STAMP)
	$(BIN)/retrain watch

## make test: the whole test suite, its files spread over two processes (most tests wait on
## real daemons and servers rather than compute)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

$(MLFLOW_STAMP): pyproject.toml
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/python -m pip install --quiet -e '.[test,mlflow]'
	touch $(MLFLOW_STAMP)

## make test-mlflow: the MLflow export's tests, in .venv-mlflow (a SQLite store and a real mlflow server)
test-mlflow: $(MLFLOW_STAMP)
	$(MLFLOW_VENV)/bin/python -m pytest -q tests/service/integrations

## make server: a Prefect server (UI at http://127.0.0.1:4200) with its state under var/
server: $(STAMP)
	PREFECT_HOME=$(CURDIR)/var/state/prefect-server $(BIN)/prefect server start --host 127.0.0.1 --port 4200

## make bench: the service against a plain pandas + scikit-learn script (results in benchmarks/results.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

## make soak: 1,000 small files through one daemon on its own local cluster after 20 warm-up files; memory per role, time per file, disk per folder (benchmarks/soak-results.md, soak.png)
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

## make soak-cluster: 500 small files after 20 through a daemon on an existing cluster (a scheduler and two workers started as separate processes); memory of each (benchmarks/soak-results.md, soak-cluster.png)
soak-cluster: $(STAMP)
	$(BIN)/python benchmarks/soak.py --existing-cluster

soak-quick: $(STAMP)
	$(BIN)/python benchmarks/soak.py --quick

## make faults: the fault matrix (stops, kills, the Prefect API going away, a Dask scheduler restarted, a full disk, a read-only registry; needs root for mount); writes benchmarks/faults-results.md and its section of benchmarks/results.md
faults: $(STAMP)
	$(BIN)/python benchmarks/faults.py

## make bench-serve: retrain serve under load while three versions are deployed (a few minutes)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_load.py

## make bench-serve-peer: retrain serve against mlflow models serve, same model, 1/8/32 clients (a few minutes)
bench-serve-peer: $(MLFLOW_STAMP)
	$(MLFLOW_VENV)/bin/python benchmarks/serve_peer.py

## make bench-cluster: XGBoost beyond one worker's memory, and the model search (benchmarks/beyond_one_worker.json)
bench-cluster: $(STAMP)
	$(BIN)/python benchmarks/beyond_one_worker.py --out benchmarks/beyond_one_worker.json

## make bench-deployment: drop-to-deployed with every run a flow run of the deployment vs the flow called directly (benchmarks/deployment-cost-results.md)
bench-deployment: $(STAMP)
	$(BIN)/python benchmarks/deployment_cost.py

## make bench-run-command: `retrain run FILE` handed to a warm daemon and on its own, against the warm drop and the plain script (benchmarks/run-command-results.md)
bench-run-command: $(STAMP)
	$(BIN)/python benchmarks/run_command.py

## make bench-production: scoring 1,000,000 rows and joining their late labels through a warm daemon vs plain scripts (benchmarks/production-results.md)
bench-production: $(STAMP)
	$(BIN)/python benchmarks/production.py

## make scenarios: the gate's decisions on synthetic streams whose truth is known, over 3 seeds (benchmarks/scenarios-results.md)
scenarios: $(STAMP)
	$(BIN)/python benchmarks/scenarios.py

## make bench-real-data: real tabular data bundled in packages (scikit-learn, statsmodels) as four batches through retrain run, against a hand-written pipeline (benchmarks/real-data-results.md); and the default search's candidates in that pipeline, which the default is chosen from (real-data-candidates.md)
bench-real-data: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/real_data.py
	$(BIN)/python benchmarks/real_data.py --candidates

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
