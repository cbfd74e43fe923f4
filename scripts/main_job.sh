#!/usr/bin/env bash
# Install, then run the main job: start from the shipped dense CIFAR-10 ResNet-20
# (examples/cifar/weights/resnet20_dense.pt), fine-tune it briefly on CPU under channel pruning 50% and
# under snip_momentum 4x1 50% + W8A8 (offline data: ../shared/data/cifar10, or --source DIR), clean with
# RedundancyClean, and print the report (accuracy on all 10,000 test images, parameters, size, latency)
# and the picture's path. Arguments go to examples/main_job.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python examples/main_job.py "$@"
