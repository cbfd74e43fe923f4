"""llm-compressor's side of ``benchmarks/oneshot.py`` (not CI): one configuration per process as
``oneshot.py`` runs it (several: one after another, the model reloaded for each), run by
the python of llm-compressor's own virtual environment (``benchmarks/.venvs/llmc``, which
``oneshot.py`` creates), never by the project's.

    benchmarks/.venvs/llmc/bin/python benchmarks/oneshot_llmc.py --configs "sparsegpt 50%" "gptq w3" \\
        --tokens TOKENS.pt --out RESULT.json

``TOKENS.pt`` is written by ``oneshot.py``: the very calibration and evaluation token ids our side
uses (so both sides see identical samples).  Calibration goes through ``llmcompressor.oneshot`` with a
plain ``DataLoader`` of ``{"input_ids": [1, seq]}`` batches (llm-compressor uses a DataLoader as given:
no shuffling, no re-tokenization), its default ``pipeline="independent"`` (the sequential pipeline
for SparseGPT / Wanda / GPTQ / SmoothQuant, layer outputs of the compressed layer fed to the next).

Settings, equal to ours (``oneshot.py``'s CONFIGS):
* SparseGPT / Wanda: ``sparsity=0.5`` or ``mask_structure="2:4"``, ``block_size=128``,
  ``dampening_frac=0.01`` (SparseGPT), every decoder ``Linear`` (``lm_head`` ignored: ours never
  touches it, and SmolLM2 ties it to the embedding).
* GPTQ / RTN: ``QuantizationArgs(num_bits=b, type="int", symmetric=True, strategy="group",
  group_size=G)``, ``actorder=None`` (ours: ``act_order=False``), ``dampening_frac=0.01``,
  ``block_size=128``; RTN is ``QuantizationModifier`` with the same scheme.
* SmoothQuant: ``SmoothQuantModifier(smoothing_strength=0.5)`` then ``QuantizationModifier`` with
  the ``W8A8`` preset (int8 symmetric per-channel weights, int8 symmetric dynamic per-token inputs),
  as ours.
* magnitude: not run (llm-compressor's ``MagnitudePruningModifier`` is a training-time schedule,
  start / end epochs with a cubic ramp, not a one-shot method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _oneshot_common import load_model, perplexity, timed  # noqa: E402

IGNORE = ["re:.*lm_head"]


def quant_scheme(bits: int, group: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group, actorder=None)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}


def recipe_for(name: str, group: int):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    if name == "dense":
        return []
    kind, _, setting = name.partition(" ")
    if kind in ("sparsegpt", "wanda"):
        sp = dict(sparsity=0.5, mask_structure="2:4") if setting == "2:4" else dict(sparsity=0.5)
        if kind == "sparsegpt":
            return [SparseGPTModifier(**sp, block_size=128, dampening_frac=0.01, targets=["Linear"], ignore=IGNORE)]
        return [WandaPruningModifier(**sp, targets=["Linear"], ignore=IGNORE)]
    if kind in ("rtn", "gptq"):
        bits = int(setting.split()[0].lstrip("w"))
        groups = quant_scheme(bits, group)
        if kind == "gptq":
            return [GPTQModifier(config_groups=groups, ignore=["lm_head"], actorder=None, block_size=128, dampening_frac=0.01)]
        return [QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    if kind == "smoothquant":
        return [SmoothQuantModifier(smoothing_strength=0.5), QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    raise ValueError(f"oneshot_llmc: no llm-compressor recipe for config {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--out", required=True, help="JSON file, rewritten after every configuration")
    ap.add_argument("--model-dir", help="the plain float32 folder oneshot.py saved (default: dequantize the GGUF file)")
    args = ap.parse_args()
    import compressed_tensors
    import llmcompressor
    import transformers
    from llmcompressor import oneshot
    from torch.utils.data import DataLoader

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = torch.load(args.tokens)
    calib, evals = data["calib"], data["eval"]

    def load():
        model, tok = load_model(args.model_dir)
        if args.model_dir is None:
            # llm-compressor's Oneshot.validate_model reads the on-disk config (AutoConfig.from_pretrained of
            # model.config.name_or_path) and refuses a model whose config names a quantization method other than
            # compressed-tensors.  A model loaded from a GGUF file has no config.json there (the package folder
            # holds only the .gguf) and its config records quant_method "gguf" although transformers dequantized
            # every weight to float32 (the dense perplexity is the same on both sides).  So the model's config,
            # without that record, is saved to a folder of its own and the model pointed at it; weights untouched.
            # (oneshot.py's --model-dir folder is such a folder already: save_plain.)
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            cfg_dir = tempfile.mkdtemp(prefix="smollm2-config-")
            model.config.save_pretrained(cfg_dir)
            cfg_file = Path(cfg_dir) / "config.json"
            cfg = json.loads(cfg_file.read_text())
            cfg.pop("quantization_config", None)
            cfg_file.write_text(json.dumps(cfg, indent=2))
            model.config._name_or_path = model.name_or_path = cfg_dir
        return model, tok

    rows: dict = {"versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                               "torch": torch.__version__, "transformers": transformers.__version__}}
    for name in args.configs:
        torch.manual_seed(0)
        model, tok = load()
        recipe = recipe_for(name, args.group)
        row: dict = {}
        try:
            if recipe:
                loader = DataLoader([{"input_ids": c} for c in calib], batch_size=1)
                _, row = timed(lambda: oneshot(model=model, tokenizer=tok, recipe=recipe, dataset=loader,
                                               num_calibration_samples=len(calib), max_seq_length=calib.shape[1],
                                               shuffle_calibration_samples=False, output_dir=None))
            row["ppl"] = perplexity(model, evals)
        except Exception as e:  # noqa: BLE001  (reported in the table, the other configurations still run)
            row = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows[name] = row
        Path(args.out).write_text(json.dumps(rows, indent=2))
        print(f"llm-compressor {name}: {row}", flush=True)


if __name__ == "__main__":
    main()
