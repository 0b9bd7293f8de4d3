# Two commands do all the set-up on a fresh clone: `make quickstart` and `make test`.
# Both create .venv when it is missing and install the project into it (offline here:
# torch and torchvision come from this machine's disk).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Real CIFAR-10 lives beside the checkout here; elsewhere it is downloaded into ./data.
DATA_DIR ?= $(if $(wildcard ../shared/data/cifar-10-batches-py),../shared/data,data)
QUICKSTART_ARGS ?=

.PHONY: install test check lint typecheck quickstart benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_kd tests benchmarks
	$(VENV)/bin/ruff format --check lightning_kd tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

test: check
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(PY) -m lightning_kd.quickstart --data-dir $(DATA_DIR) $(QUICKSTART_ARGS)

benchmark: $(STAMP)
	$(PY) benchmarks/kd_overhead.py --data-dir $(DATA_DIR)

clean:
	rm -rf runs lightning_logs .pytest_cache .mypy_cache .ruff_cache
