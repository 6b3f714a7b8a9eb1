# `make demo` and `make test` each work on a fresh machine: they create .venv and install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-browser demo test app bench clean
# the browser tests drive Debian's chromium (a browser downloaded at run time fails offline); root or sudo installs it
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/infusion demo --out demo

install-browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# BROWSER=0 skips Debian's chromium (no apt) and the browser tests: `make test BROWSER=0`
BROWSER ?= 1
ifeq ($(BROWSER),0)
test: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/test_app_browser.py
else
test: $(STAMP) install-browser
	$(BIN)/python -m pytest tests
endif

app: $(STAMP)
	$(BIN)/infusion app --model world --library library

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_infusion.py

clean:
	rm -rf $(VENV) demo build *.egg-info src/*.egg-info
