#!/usr/bin/env bash
# Install, then run the main job: train a CIFAR ResNet-20 briefly on CPU from the offline data
# (../shared/data/cifar10 zips, or --source DIR), prune 50% of its channels, remove them with
# RedundancyClean, and print the report (accuracy, parameters, size, latency before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python examples/main_job.py "$@"
