# captionbeam: every target sets up what it needs on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= work/run
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: help install sysdeps engines cluster cluster-stop cluster-status test run bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test,eval,report]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install captionbeam with its test, eval and report extras

# System packages the tests need beyond Python: Java (METEOR and the PTB tokenizer in pycocoevalcap) and
# headless Chromium (the report tests render the HTML report). Installed with apt-get when missing and
# apt-get is there (root, or passwordless sudo); elsewhere install them yourself (see README).
SYSDEPS := $(if $(shell command -v javac),,default-jdk-headless) $(if $(shell command -v chromium),,chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
sysdeps:  ## install a JDK (java, and javac for make cluster) and headless Chromium with apt-get when they are missing
	@if [ -z "$(strip $(SYSDEPS))" ]; then echo "sysdeps: a JDK and chromium present"; \
	elif command -v apt-get >/dev/null; then \
	  echo "sysdeps: apt-get install $(strip $(SYSDEPS))"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	else echo "sysdeps: missing $(strip $(SYSDEPS)) and no apt-get: install them (see README)" >&2; exit 1; fi

# Real Beam engines for the flink-local / spark-local / prism profiles and tests/test_engines.py: Flink's and
# Spark's job servers (mvn, Maven Central) and the Prism binary (go install, the Go module proxy), pinned to
# the installed apache-beam, plus Flink 1.19's and Spark 3.5's distributions for `make cluster` (pip download
# --no-deps, unpacked, never installed), cached in .engines/ (skipped when there; see launch/engines.py).
engines: $(STAMP)  ## fetch and cache the Flink and Spark job servers, the Prism runner and the cluster distributions (mvn, go, pip)
	$(BIN)/python -m captionbeam.launch.engines fetch

# A multi-process cluster on 127.0.0.1 (Flink: 1 JobManager + 2 TaskManagers; Spark: 1 master + 2 workers; a
# pool of Beam SDK worker processes) for the flink-cluster / spark-cluster profiles; ports, pids and logs in
# .cluster/ (docs/cluster.md). Starting a running cluster does nothing; stop it when done (1.6 GiB idle).
cluster: $(STAMP) engines  ## start the loopback Flink + Spark standalone cluster and SDK worker pool (.cluster/)
	$(BIN)/python -m captionbeam.launch.cluster start

cluster-stop:  ## stop the cluster started by `make cluster`
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m captionbeam.launch.cluster stop; fi

cluster-status:  ## print the cluster's addresses and which of its processes are alive
	$(BIN)/python -m captionbeam.launch.cluster status

test: $(STAMP) sysdeps engines  ## run the test suite (installs Java and Chromium, fetches the engines first)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

run: $(STAMP)  ## run the main job on the embedded sample dataset (no data, no cloud account)
	$(BIN)/captionbeam run --workdir $(WORKDIR)

bench: $(STAMP)  ## run the benchmarks (uses ../shared when present)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)  ## static checks: byte-compile everything, pyflakes-grade checks with ruff if installed
	$(BIN)/python -m compileall -q pipelines model launch tests benchmarks
	@if [ -x $(BIN)/ruff ]; then $(BIN)/ruff check pipelines model launch tests benchmarks; else echo "ruff not installed (pip install ruff) — skipped"; fi

clean:  ## remove the virtual environment and generated work directories
	rm -rf $(VENV) work *.egg-info  # .engines/ is kept: `rm -rf .engines` to fetch again
