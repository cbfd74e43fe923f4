"""CPU latency of a dense vs slim Llama-shaped decoder after 50% head + 50% FFN pruning + ``clean``.

``transformers.LlamaModel`` from a config (random init): hidden ``--hidden`` (512), ``--layers`` (4)
layers, 8 query heads in 4 key/value groups (grouped-query attention), intermediate ``--ffn`` (1408),
eager attention.  HeadPruning(sparsity=0.5) removes half of the key/value groups of every layer with
their query heads; RowPruning(sparsity=0.5) half of the SwiGLU rows (``gate_proj`` and ``up_proj``
share one row mask, ``down_proj`` loses the columns).  Masks from the callbacks' ``l1`` ranking (the
structure is what matters for speed).  Latency: median of ``--runs`` interleaved forwards (dense,
slim, dense, ...), ``torch.no_grad``, eval, ``--threads`` intra-op threads, batch ``--batch`` x
``--seq`` tokens.  FLOPs by ``torch.utils.flop_counter``.

    python benchmarks/slim_latency_llama.py --threads 1 --runs 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_compress.callbacks import HeadPruning, RowPruning
from lightning_compress.export import clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1408)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=8,
                                   num_key_value_heads=4, intermediate_size=args.ffn, vocab_size=1000,
                                   max_position_embeddings=max(256, args.seq))
    cfg._attn_implementation = "eager"
    dense = transformers.LlamaModel(cfg).eval()
    model = copy.deepcopy(dense)
    for cb in (HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5)):
        cb.attach(model)
        for g in cb.pruner.groups:
            cb.prune_group(g, g.sparsity)
    ids = torch.randint(0, 1000, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masked = model(input_ids=ids).last_hidden_state
        slim = clean(model).eval()
        err = float((slim(input_ids=ids).last_hidden_state - masked).norm() / masked.norm())

    def flops(m: torch.nn.Module) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(input_ids=ids)
        return fc.get_total_flops()

    times: dict[str, list[float]] = {"dense": [], "slim": []}
    with torch.no_grad():
        for m in (dense, slim):
            m(input_ids=ids)  # warm-up
        for _ in range(args.runs):
            for name, m in (("dense", dense), ("slim", slim)):
                t0 = time.perf_counter()
                m(input_ids=ids)
                times[name].append(time.perf_counter() - t0)
    d, s = (statistics.median(times[k]) * 1e3 for k in ("dense", "slim"))
    pd, ps = (sum(p.numel() for p in m.parameters()) for m in (dense, slim))
    ratio = flops(dense) / flops(slim)
    c = slim.config
    print(f"slim config: heads {c.num_attention_heads}, kv heads {c.num_key_value_heads}, intermediate {c.intermediate_size}; "
          f"rel |slim - masked| = {err:.1e}")
    print("| model | params | FLOP ratio | dense ms | slim ms | speedup | speedup / FLOP ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| Llama {args.layers}L hidden {args.hidden} (8 heads / 4 KV, FFN {args.ffn}), bs{args.batch} seq{args.seq}, "
          f"50% KV groups + 50% FFN rows | {pd / 1e6:.1f}M -> {ps / 1e6:.1f}M | {ratio:.2f}x | {d:.1f} | {s:.1f} | "
          f"{d / s:.2f}x | {d / s / ratio:.2f} |")


if __name__ == "__main__":
    main()
