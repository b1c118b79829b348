# Two commands on a fresh machine (each installs what it needs):
#   make demo   # the main job end to end on a local S3 server
#   make test   # lint (mypy + ruff), then the whole test suite, including the real Ceph RGW
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test test-fast test-unit bench ceph-up ceph-down clean

install: $(STAMP)

# torch is pinned to the CPU wheel this machine ships; an unpinned torch would pull a CUDA build.
$(STAMP): setup.cfg setup.py pyproject.toml blip3o_petrel.pth
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py $(DEMO_ARGS)

# Type check and lint; zero findings is the bar (settings and the reasons for them: pyproject.toml).
# These paths are also mypy's `files` in pyproject.toml, so a bare `mypy` checks the same set.
LINT_PATHS := blip3o_storage blip3o_petrel_hook.py setup.py tools benchmarks tests configs

lint: $(STAMP)
	status=0; $(PY) -m mypy $(LINT_PATHS) || status=1; $(PY) -m ruff check $(LINT_PATHS) || status=1; exit $$status

test: $(STAMP) lint
	PYTHON=$(PY) bash tools/run_tests.sh $(PYTEST_ARGS)

# The same suite without the Ceph RGW (moto server only).
test-fast: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# tests/unit only: no server of any kind.
test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# Throughput tables (README "Benchmarks"); BENCH_ARGS="--target ceph --split-cpus" after `make ceph-up`.
# Also writes the tables as JSON and PNG plots of them (benchmarks/plots.py) into BENCH_PLOTS.
# Then the peer table (benchmarks/peers.py, same --target; more in PEERS_ARGS, e.g. "--rounds 7"), with the
# peers of setup.cfg's bench extra installed, and Debian's rclone when missing (else its column says so).
BENCH_JSON  ?= demo-work/bench.json
PEERS_JSON  ?= demo-work/peers.json
BENCH_PLOTS ?= demo-work/bench-plots
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	command -v rclone >/dev/null || apt-get install -y -q rclone || echo "rclone not installed: its column says so"
	mkdir -p $(dir $(BENCH_JSON)) $(dir $(PEERS_JSON))
	$(PY) benchmarks/run.py --json $(BENCH_JSON) $(BENCH_ARGS)
	$(PY) benchmarks/plots.py $(BENCH_JSON) --out $(BENCH_PLOTS)
	$(PY) benchmarks/shards.py $(BENCH_ARGS)
	$(PY) benchmarks/checkpoint.py $(filter-out --split-cpus,$(BENCH_ARGS))
	$(PY) benchmarks/peers.py $(if $(findstring ceph,$(BENCH_ARGS)),--target ceph) --json $(PEERS_JSON) $(PEERS_ARGS)
	$(PY) benchmarks/plots.py $(PEERS_JSON) --out $(BENCH_PLOTS)/peers
	$(PY) benchmarks/scale.py $(SCALE_ARGS)

ceph-up:
	bash tools/ceph_dev.sh up

ceph-down:
	bash tools/ceph_dev.sh down

clean:
	rm -rf $(VENV) demo-work
