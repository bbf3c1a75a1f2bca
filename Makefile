# Two commands on a fresh clone: `make export` and `make test`.
# Each builds .venv from pyproject.toml by itself the first time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/quickstart.yaml
SET    ?=

# The stamp is rebuilt whenever pyproject.toml changes, so a pin change reinstalls.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: venv export status test test-slow probe clean
venv: $(VENV)/.installed

export: $(VENV)/.installed
	$(PY) -m pipeline run --config $(CONFIG) $(foreach s,$(SET),--set $(s))

status: $(VENV)/.installed
	$(PY) -m pipeline status --config $(CONFIG) $(foreach s,$(SET),--set $(s))

test: $(VENV)/.installed
	$(PY) -m pytest

# The slow matrix: real data from ../shared, full-size models.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

# Frozen-feature linear probe, the baseline a fine-tuned model has to beat.
probe: $(VENV)/.installed
	$(PY) -m benchmarks.linear_probe --config $(CONFIG)

clean:
	rm -rf build
