# The README's two commands: `make demo` and `make test`. Everything they need is installed
# from here (a virtual environment from PyPI, and Debian packages for the test servers).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install system-deps demo test bench bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

# Debian packages the test suite runs real servers from (installed when missing, as root),
# and Azurite (npm, pinned in the script) into .azurite/.
system-deps:
	@scripts/install-system-deps.sh

demo: install
	$(BIN)/rtk-archiver demo --dir demo-archive

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks (BENCHMARKS.md): scripts that print figures and write bench/results/*.json and
# the plot. Needs root for sshd and Debian's rclone / openssh-server (installed when missing).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

bench-deps: $(BENCH_STAMP)
	@BENCH=1 scripts/install-system-deps.sh

BENCH_ARGS ?=
# bench.scale: 10,000 recordings through a Prefect server on PostgreSQL: ~40 min on a busy 2-core
# machine (BENCHMARKS.md "Proven at scale"); e.g. SCALE_ARGS="--count 1000" for a ~2 min run
SCALE_ARGS ?=
# bench.wan (BENCHMARKS.md "Over an emulated WAN"): default 256 MiB, both links, every backend, 3 runs;
# bench.wan_timeline: where the object stores' time goes at 20 ms / 100 Mbit/s (~6 min)
WAN_ARGS ?=
bench: bench-deps
	$(BIN)/python -m bench.listing
	$(BIN)/python -m bench.small
	$(BIN)/python -m bench.crowded
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.large $(BENCH_ARGS)
	$(BIN)/python -m bench.webhook
	$(BIN)/python -m bench.delivery
	$(BIN)/python -m bench.backfill
	$(BIN)/python -m bench.scale $(SCALE_ARGS)
	$(BIN)/python -m bench.wan $(WAN_ARGS)
	$(BIN)/python -m bench.wan_timeline
	$(BIN)/python -m bench.server_path
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) demo-archive .pytest_cache .azurite
