#!/usr/bin/env bash
# The CUDA paths on a GPU machine (bf16, QLoRA, 2-process NCCL, FSDP, the server), one
# line per check; see tools/gpu_check.py. Never run in CI.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" tools/gpu_check.py "$@"
