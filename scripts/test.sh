#!/usr/bin/env bash
# Install, then run the whole test suite (DeepSpeed scenarios included, on 2 CPU processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q -p no:cacheprovider tests
