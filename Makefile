# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch is pinned here, not in pyproject.toml: users bring their own torch; this pair installs from local disk.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

# the suite in TEST_WORKERS processes (pytest-xdist), each fixture's data made once for all (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tools/demo.py --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check lumbar_fast tools benchmarks tests

clean-demo:
	rm -rf demo_out
