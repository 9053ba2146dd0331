"""What the attention statistics and the input-side tests cost, against the plain (fused-attention) forward.

Usage: python benchmarks/attention_cost.py [--model pe_deit_tiny_patch16_224] [--pe-mode mpvg] [--batch-size 32]
                                           [--repeats 5] [--threads N] [--tiny]

The same batch of random images, in eval mode, timed interleaved in one process (``_common.interleaved``:
medians of ``--repeats`` rounds, and the median of the per-round ratios with their quartiles):

- ``plain``: one ``model(x)`` under ``torch.inference_mode()`` with timm's fused attention (its default);
- ``unfused``: the same forward with fused attention switched off (what the statistics must run on: the
  attention matrix has to exist);
- ``attention``: ``attention_stats`` on the batch (unfused forward + per-head distance, prefix share, entropy,
  and the logit split where the model has an additive PE term);
- ``attention (no split)``: the same with ``decompose=False``.

Printed: each contender as a multiple of ``plain``, and of ``unfused`` (the statistics' own share).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine, median, paired, torch_threads  # noqa: E402

import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)
from pe_probe.probing.attention import attention_modules, attention_stats, unfused  # noqa: E402

TINY_KWARGS = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, num_classes=10)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_deit_tiny_patch16_224")
    ap.add_argument("--pe-mode", default="mpvg")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="a tiny model (for the test suite)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(args.model, pe_mode=args.pe_mode, **(TINY_KWARGS if args.tiny else {})).eval()
        size = model.patch_embed.img_size
        x = torch.randn(args.batch_size, 3, *size)
        mods, _ = attention_modules(model)

        def plain():
            with torch.inference_mode():
                model(x)

        def unfused_fwd():
            with torch.inference_mode(), unfused(mods):
                model(x)

        fns = {"plain": plain, "unfused": unfused_fwd,
               "attention": lambda: attention_stats(model, x, batch_size=args.batch_size, progress=False),
               "attention (no split)": lambda: attention_stats(model, x, batch_size=args.batch_size, progress=False,
                                                               decompose=False)}
        times = interleaved(fns, args.repeats)
        print(f"# {machine()}")
        print(f"# {args.model} pe_mode={args.pe_mode} batch {args.batch_size}, {args.repeats} rounds")
        base = median(times["plain"])
        out = {"plain_s": base}
        for name in fns:
            med, lo, hi = paired(times, name, "plain")
            own = paired(times, name, "unfused")[0]
            print(f"{name:22s} {median(times[name]) * 1e3:8.1f} ms  {med:5.2f} x plain per round [{lo:.2f}, {hi:.2f}]"
                  f"  {own:5.2f} x unfused")
            out[name] = med
        return out


if __name__ == "__main__":
    main()
