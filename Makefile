# One command to install and run the lab, one to install and pass the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lab test lint browser bench clean netns-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test]'
	touch $(STAMP)

install: $(STAMP) netns-deps

# `mtlsprobe lab --netns` (root only) needs ip and iptables-restore; as root on Debian,
# install what is missing. Never fatal: the loopback lab and the tests run without them
# (tests/test_lab_netns.py then says why it skips).
netns-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   ! { command -v ip && command -v iptables-restore && command -v setpriv; } >/dev/null; then \
	  echo "installing iproute2 iptables util-linux for mtlsprobe lab --netns"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    -o DPkg::Lock::Timeout=300 iproute2 iptables util-linux \
	  || echo "WARNING: could not install iproute2/iptables: lab --netns will be unavailable"; \
	fi

lab: $(STAMP)
	$(BIN)/mtlsprobe lab

# The HTML report's tests run it in Debian's headless Chromium. As root (CI, the
# container) a missing browser is installed once; otherwise say so: those tests skip.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (Debian) for the HTML report's browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "WARNING: chromium/chromedriver missing and not root: the browser tests will SKIP" \
		     "(as root: apt-get install chromium chromium-driver)" >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
