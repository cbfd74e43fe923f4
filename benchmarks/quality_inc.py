"""One Intel Neural Compressor 2.1 row of ``benchmarks/quality.py``: run by the INC venv's python.

Same start weights, batches, order, optimizer, schedule of the learning rate and evaluation as our
rows (``benchmarks/quality_common.py``); INC prunes with

    WeightPruningConfig(pruning_type="snip_momentum", pattern="4x1", target_sparsity=s,
                        op_names=["encoder\\.layer\\.\\d+\\."], start_step=0, end_step=E,
                        pruning_frequency=F, pruning_scope="global", sparsity_decay_type="exp",
                        max_sparsity_ratio_per_op=0.98)

with ``E`` and ``F`` the optimizer steps our callbacks resolve ``end_step`` and ``frequency`` to
(``floor(f * T)``, the end capped at the last step ``T - 1``, the frequency at least 1), and INC's
training-loop hooks where its own examples call them: ``on_train_begin``; per step
``on_step_begin(step)``, forward, backward, ``on_before_optimizer_step`` (snip-momentum scores),
``optimizer.step()``, ``on_after_optimizer_step`` (masks multiplied into the weights), learning-rate
step; ``on_train_end``.  INC keeps the zeros in the weights, so the trained model is scored as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import quality_common as qc  # noqa: E402


def resolve(value: float, total: int, minimum: int = 0, cap: bool = True) -> int:
    """Our rule for a step argument given as a fraction of the fit (``core.args.resolve_step``)."""
    step = int(math.floor(value * total + 1e-9))
    if cap:
        step = min(step, total - 1)
    return max(step, minimum)


class NoCallbacks:
    def __getattr__(self, name: str):  # noqa: ANN204
        return lambda *a, **k: None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--sparsity", type=float, required=True, help="0: no INC, the plain loop (row dense_inc)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--frequency", type=float, default=0.01, help="fraction of the fit, as ours")
    ap.add_argument("--end-step", type=float, default=1.0, help="fraction of the fit, as ours")
    ap.add_argument("--row", default="inc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import neural_compressor
    from neural_compressor.training import WeightPruningConfig, prepare_compression

    data = qc.load_prepared(Path(args.prepared))
    steps = len(data["train"])
    end_step = resolve(args.end_step, steps)
    frequency = resolve(args.frequency, steps, minimum=1, cap=False)
    model = qc.build_model(args.model_dir)
    model.load_state_dict(data["state"])
    dense_numel = qc.encoder_numel(model.state_dict())
    model.train()
    config = WeightPruningConfig(
        pruning_type="snip_momentum", pattern="4x1", target_sparsity=args.sparsity,
        op_names=[r"encoder\.layer\.\d+\."], start_step=0, end_step=end_step, pruning_frequency=frequency,
        pruning_scope="global", sparsity_decay_type="exp", max_sparsity_ratio_per_op=0.98,
    )
    if args.sparsity > 0:
        cbs = prepare_compression(model, config).callbacks
    else:  # the plain loop of this venv, for checking that both sides train alike
        cbs = NoCallbacks()
    opt, sched = qc.make_optimizer(model, args.lr, steps)
    torch.manual_seed(args.seed)
    losses = []
    with qc.Timer() as t:
        cbs.on_train_begin()
        # a DataLoader as Lightning's (its iterator draws one number from the global generator)
        for step, batch in enumerate(DataLoader(data["train"], batch_size=None, shuffle=False)):
            cbs.on_step_begin(step)
            loss = model(**batch).loss
            loss.backward()
            cbs.on_before_optimizer_step()
            opt.step()
            cbs.on_after_optimizer_step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        cbs.on_train_end()
    scores = qc.evaluate(model, data["dev"])
    result = {
        "row": args.row, "side": "inc", "train_seconds": t.seconds, "steps": steps,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]), "losses": losses, "scores": scores,
        "dev_n": sum(int(b["labels"].numel()) for b in data["dev"]),
        "sparsity": qc.encoder_sparsity(model.state_dict(), dense_numel),
        "params": sum(p.numel() for p in model.parameters()),
        "inc": {"version": neural_compressor.__version__, "torch": torch.__version__,
                "end_step": end_step, "pruning_frequency": frequency, "target_sparsity": args.sparsity},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
