#!/usr/bin/env bash
# The GPU check of issue 14: at most ~8 minutes on one GPU. Installs the project (pip picks a CUDA
# torch where nvidia-smi exists), then LoRA-tunes SmolLM2 in bf16 and evaluates it on 50 episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: running on the CPU"
make install >/dev/null
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
