# The README's two commands: `make demo` and `make test`. Everything they need is installed
# from here (a virtual environment from PyPI, and Debian packages for the test servers).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install system-deps demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

# Debian packages the test suite runs real servers from (installed when missing, as root).
system-deps:
	@scripts/install-system-deps.sh

demo: install
	$(BIN)/rtk-archiver demo --dir demo-archive

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-archive .pytest_cache
