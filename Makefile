# One entry point for people and CI. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED = false
export DO_NOT_TRACK = 1

.PHONY: install run test faults bench bench-quick bench-serve bench-cluster bench-deployment bench-run-command soak soak-quick server clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: start the daemon on config/retrain.toml (home: var/)
run: $(STAMP)
	$(BIN)/retrain watch

## make test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make server: a Prefect server (UI at http://127.0.0.1:4200) with its state under var/
server: $(STAMP)
	PREFECT_HOME=$(CURDIR)/var/state/prefect-server $(BIN)/prefect server start --host 127.0.0.1 --port 4200

## make bench: the service against a plain pandas + scikit-learn script (results in benchmarks/results.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

## make soak: 500 small files through one daemon after 20 warm-up files; memory per role, time per file, disk per folder (benchmarks/soak-results.md, soak.png)
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py

soak-quick: $(STAMP)
	$(BIN)/python benchmarks/soak.py --quick

## make faults: the fault matrix (stops, kills, the Prefect API going away, a full disk, a read-only registry; needs root for mount); writes benchmarks/faults-results.md and its section of benchmarks/results.md
faults: $(STAMP)
	$(BIN)/python benchmarks/faults.py

## make bench-serve: retrain serve under load while three versions are deployed (a few minutes)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_load.py

## make bench-cluster: XGBoost beyond one worker's memory, and the model search (benchmarks/beyond_one_worker.json)
bench-cluster: $(STAMP)
	$(BIN)/python benchmarks/beyond_one_worker.py --out benchmarks/beyond_one_worker.json

## make bench-deployment: drop-to-deployed with every run a flow run of the deployment vs the flow called directly (benchmarks/deployment-cost-results.md)
bench-deployment: $(STAMP)
	$(BIN)/python benchmarks/deployment_cost.py

## make bench-run-command: `retrain run FILE` handed to a warm daemon and on its own, against the warm drop and the plain script (benchmarks/run-command-results.md)
bench-run-command: $(STAMP)
	$(BIN)/python benchmarks/run_command.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
