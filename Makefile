# tfe-operator: every entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYENV_ROOT ?= $(HOME)/.pyenv
# Worker runtime: Python 3.10 (TF 2.9.1 wheels stop at 3.10). Operator/tests: Python >= 3.11 (kopf).
PY310 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.10*/bin/python3.10) $(shell command -v python3.10))
PY311 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.11*/bin/python3.11) $(shell command -v python3.11))

VENV := .venv
WVENV := .venv-worker
PY := $(VENV)/bin/python
WPY := $(WVENV)/bin/python
CACHE ?= $(HOME)/.cache/tfe-operator
export PIP_CACHE_DIR ?= $(CACHE)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help setup lint test unit integration demo bench clean helm-bin s3-bin

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(WVENV)/.stamp: requirements/worker.txt requirements/worker-dev.txt worker-image/pyproject.toml client/pyproject.toml
	@test -n "$(PY310)" || { echo "Python 3.10 not found (set PY310=/path/to/python3.10)"; exit 1; }
	rm -rf $(WVENV) && $(PY310) -m venv $(WVENV)
	$(WPY) -m pip install -q -r requirements/worker-dev.txt
	$(WPY) -m pip install -q --no-deps -e client -e worker-image
	touch $@

$(VENV)/.stamp: requirements/dev.txt client/pyproject.toml operator/pyproject.toml
	@test -n "$(PY311)" || { echo "Python >= 3.11 not found (set PY311=/path/to/python3.11)"; exit 1; }
	rm -rf $(VENV) && $(PY311) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e client -e operator
	touch $@

setup: $(WVENV)/.stamp $(VENV)/.stamp ## create .venv-worker (py3.10) and .venv (py>=3.11) from pinned requirements

lint: $(VENV)/.stamp $(WVENV)/.stamp ## ruff; mypy --strict on operator/, client/ (Python 3.11) and worker-image/ (3.10, TF); go vet of tfe-guard
	$(VENV)/bin/ruff check operator client worker-image tests
	$(VENV)/bin/mypy --strict operator/tfe_operator client/tfe_client
	$(WVENV)/bin/mypy --config-file worker-image/pyproject.toml worker-image/tfe_worker
	cd $(GUARD_DIR) && $(GUARD_GOENV) $(GO) vet ./...
	cd hack/cluster/htpasswd && $(GUARD_GOENV) $(GO) vet ./...

helm-bin: ## build helm from its Go module into ~/.cache/tfe-operator (cached; the chart tests need it)
	hack/cluster/build.sh helm

s3-bin: ## build gofakes3 (an S3-compatible test server) from its Go module into ~/.cache/tfe-operator (cached)
	hack/cluster/build.sh gofakes3

unit: setup helm-bin guard ## pure unit tests (no processes, no cluster), helm lint/template of the chart, go test of tfe-guard
	TFE_HELM=$$(hack/cluster/build.sh path)/helm $(VENV)/bin/pytest -q -rs tests/unit
	$(WVENV)/bin/pytest -q tests/worker_unit
	$(MAKE) --no-print-directory guard-test
	cd hack/cluster/htpasswd && $(GUARD_GOENV) $(GO) test -count=1 ./...

integration: setup guard s3-bin ## three real TFE players behind tfe-guard (mTLS), share, serve, client over HTTP (private network namespaces)
	TFE_GUARD=$(CURDIR)/build/tfe-guard $(WPY) -m tfe_worker.netns $(WVENV)/bin/pytest -q tests/integration

test: lint unit integration ## lint, then every test that needs no cluster

demo: $(WVENV)/.stamp guard ## train digits MLP, run three local players + share + serve (mutual TLS), 200 private predictions
	TFE_GUARD=$(CURDIR)/build/tfe-guard $(WPY) -m tfe_worker.demo --workdir .demo

bench: $(WVENV)/.stamp guard ## benchmarks -> bench/results.json and a table (private network namespace)
	TFE_GUARD=$(CURDIR)/build/tfe-guard $(WPY) -m tfe_worker.netns $(WPY) -m tfe_worker.bench --out bench/results.json

clean: ## remove venvs and local state (not the cluster: see cluster-down)
	rm -rf $(VENV) $(WVENV) .demo .state .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
