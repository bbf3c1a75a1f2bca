# Two commands on a fresh clone: `make export` and `make test`.
# Each builds .venv from pyproject.toml by itself the first time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/quickstart.yaml
SET    ?=
# VERBOSE=1: everything TensorFlow, absl and the converters print (by default it goes to build/<name>/tool-output.log).
CLI    := $(PY) -m pipeline$(if $(VERBOSE), --verbose)

# The stamp is rebuilt whenever pyproject.toml changes, so a pin change reinstalls.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: venv export status verify bench bench-build bench-train report gate bench-compare steadiness figures docs matrix test test-slow probe clean
venv: $(VENV)/.installed

export: $(VENV)/.installed
	$(CLI) run --config $(CONFIG) $(foreach s,$(SET),--set $(s))

status: $(VENV)/.installed
	$(CLI) status --config $(CONFIG) $(foreach s,$(SET),--set $(s))

# Check the build's files against artifacts/manifest.json (checksums, schema, each file's metadata);
# DIR=path checks another build or a copied artifacts folder.
verify: $(VENV)/.installed
	$(CLI) verify $(if $(DIR),$(DIR),$$($(PY) -m pipeline path --config $(CONFIG) $(foreach s,$(SET),--set $(s))))

# Benchmark the last build again (every file on every target of benchmark.targets) and re-render the report;
# stages that are out of date run first.
bench: $(VENV)/.installed
	$(CLI) run --config $(CONFIG) $(foreach s,$(SET),--set $(s)) --force bench

# The whole build from a clean folder (build/bench-build/<name>/; the user's build is untouched), timed per stage,
# training phase and export step, beside the figures a faster build must not change (build/bench-build/<name>.json;
# a change from the previous bench-build is named). BUILD_FLAGS=--fail-on-change makes a change exit 1.
bench-build: $(VENV)/.installed
	$(PY) -m pipeline.build_time --config $(CONFIG) $(foreach s,$(SET),--set $(s)) $(BUILD_FLAGS)

# Images/s of the input pipeline alone and of fine-tuning, and the share of step time spent waiting for data
# (bench/train_throughput.json); TRAIN_FLAGS="--epochs 3 --steps 40" bounds the run.
bench-train: $(VENV)/.installed
	$(PY) -m pipeline.train_throughput --config $(CONFIG) $(foreach s,$(SET),--set $(s)) $(TRAIN_FLAGS)

# Re-render report/report.md and report.html from the build's bench/results.json.
report: $(VENV)/.installed
	$(PY) -m benchmarks.report $$($(PY) -m pipeline path --config $(CONFIG) $(foreach s,$(SET),--set $(s)))/bench/results.json

# Fail (exit 1) when a file's accuracy or its latency ratio to Keras regressed against BASELINE.
gate: $(VENV)/.installed
	@test -n "$(BASELINE)" || { echo "usage: make gate BASELINE=path/to/results.json [CONFIG=...]" >&2; exit 2; }
	@root=$$($(PY) -m pipeline path --config $(CONFIG) $(foreach s,$(SET),--set $(s))) && \
	$(PY) -m benchmarks.gate --baseline $(BASELINE) --results $$root/bench/results.json $(GATE_FLAGS)

# How far this build's last bench is from BASELINE's, file by file: the p50 itself and its ratios to Keras and to the
# fp32 file (benchmarks/repeatability.py); COMPARE_FLAGS="--within 0.10" exits 1 when a p50 moved more than 10%.
bench-compare: $(VENV)/.installed
	@test -n "$(BASELINE)" || { echo "usage: make bench-compare BASELINE=path/to/results.json [CONFIG=...]" >&2; exit 2; }
	@root=$$($(PY) -m pipeline path --config $(CONFIG) $(foreach s,$(SET),--set $(s))) && \
	$(PY) -m benchmarks.repeatability $(BASELINE) $$root/bench/results.json $(COMPARE_FLAGS)

# Each file of the last bench timed alone, a fresh process per file and round: how far two runs of one file can agree
# on this host with no harness at all (benchmarks/steadiness.py); STEADY_FLAGS="--targets phone-little --rounds 5".
steadiness: $(VENV)/.installed
	$(PY) -m benchmarks.steadiness $$($(PY) -m pipeline path --config $(CONFIG) $(foreach s,$(SET),--set $(s))) $(STEADY_FLAGS)

# docs/measurements.md from build folders' results: make figures BUILD="build/quickstart build/flowers".
FIGURES ?= docs/measurements.md
figures: $(VENV)/.installed
	@test -n "$(BUILD)" || { echo "usage: make figures BUILD=build/<name> [FIGURES=docs/measurements.md]" >&2; exit 2; }
	$(PY) -m benchmarks.figures $(BUILD) --out $(FIGURES)

# docs/config.md from the schema in pipeline/config.py (a test fails when they differ).
docs: $(VENV)/.installed
	$(PY) -m pipeline.docs

# The backbone × format matrix, docs/matrix.md and docs/matrix.json: every backbone through every stage and
# export format at a small input with weights none (one child process per backbone; the page is rewritten after
# each). MATRIX_FLAGS="--backbones vgg16,xception" rebuilds some rows; builds are kept in build/matrix/.
MATRIX_FLAGS ?=
matrix: $(VENV)/.installed
	$(PY) -m pipeline.matrix $(MATRIX_FLAGS)

# One worker per core (pytest-xdist); tests that share an expensive fixture carry one xdist_group
# mark and go to one worker, the rest are handed out a test at a time.
XDIST ?= -n auto --dist loadgroup

# lint-imports: the layering contracts of pyproject.toml ([tool.importlinter]), function-local imports included.
test: $(VENV)/.installed
	$(VENV)/bin/lint-imports --config pyproject.toml
	$(PY) -m pytest $(XDIST)

# The slow matrix: real data from ../shared, full-size models.
test-slow: $(VENV)/.installed
	$(PY) -m pytest $(XDIST) -m slow

# Frozen-feature linear probe, the baseline a fine-tuned model has to beat.
probe: $(VENV)/.installed
	$(PY) -m pipeline.linear_probe --config $(CONFIG)

clean:
	rm -rf build
