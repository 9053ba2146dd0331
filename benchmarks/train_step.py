"""Training step time (forward + backward + AdamW step) of the layer-wise schemes vs the default ViT.

Usage: python benchmarks/train_step.py [--model pe_deit_tiny_patch16_224] [--batch-size 16] [--repeats 5]
                                        [--profile N]

Every model is built at the same size and pooling as its baseline and timed interleaved in one process;
the printed ratios are scheme / baseline medians, and the median of the per-round ratios with their
interquartile range (a round runs every step back to back). Goal (issue 6): <= 1.03 for pvg and mpvg.
``--profile N`` also runs ``torch.profiler`` over N steps of default/avg and mpvg/avg and prints where
their self CPU times differ, operator by operator.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import comma_kwargs, interleaved, machine, median, paired  # noqa: E402

import pe_probe.models  # noqa: E402,F401  (registers the pe_* variants with timm)

PAIRS = [
    # (label, kwargs, baseline label)
    ("default/avg", dict(pe_mode="default", global_pool="avg"), None),
    ("pvg/avg", dict(pe_mode="pvg", global_pool="avg"), "default/avg"),
    ("mpvg/avg", dict(pe_mode="mpvg", global_pool="avg"), "default/avg"),
    ("default/token", dict(pe_mode="default", global_pool="token"), None),
    ("lape/token", dict(pe_mode="lape", global_pool="token"), "default/token"),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pe_deit_tiny_patch16_224")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model-kwargs", default="", help="extra kwargs as key=value,key=value (ints/floats parsed)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile N steps of default/avg and mpvg/avg and print the per-operator differences")
    args = ap.parse_args(argv)
    extra = comma_kwargs(args.model_kwargs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = {}
    for label, kw, _ in PAIRS:
        torch.manual_seed(0)
        m = timm.create_model(args.model, **kw, **extra).to(device).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        size = m.patch_embed.img_size
        x = torch.randn(args.batch_size, m.in_chans, *size, device=device)
        y = torch.randint(0, m.num_classes, (args.batch_size,), device=device)

        def step(m=m, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        steps[label] = step
    steps["extra ops only"] = _extra_ops(args.model, extra, args.batch_size, device)
    times = interleaved(steps, repeats=args.repeats)
    print(f"# train step, {args.model} {extra or ''} batch {args.batch_size}, {args.repeats} interleaved repeats")
    print(f"# {machine()}")
    for label, _, base in PAIRS:
        t = median(times[label])
        ratio = ""
        if base is not None:
            med, lo, hi = paired(times, label, base)
            ratio = f"  ratio vs {base}: {t / median(times[base]):.3f}  per round: {med:.3f} [{lo:.3f}, {hi:.3f}]"
        print(f"{label:15s} median {t * 1000:8.1f} ms{ratio}")
    t = median(times["extra ops only"])
    print(f"{'extra ops only':15s} median {t * 1000:8.1f} ms  = {t / median(times['default/avg']):.4f} of a default step"
          "  (what mpvg adds: the PE LayerNorm chain, the broadcast adds and their backward)")
    if args.profile:
        profile_diff(steps["default/avg"], steps["mpvg/avg"], args.profile)


def profile_diff(base, other, n: int, top: int = 8) -> None:
    """Self CPU time per operator over ``n`` steps each of ``base`` and ``other`` (profiled alternately, one
    step per profiler session, so slow drift of the machine hits both), split into the operators that
    ``other`` calls more often (what the scheme adds) and those called equally often (same work: their
    difference is the machine's noise)."""
    from torch.profiler import ProfilerActivity, profile

    sums: list[dict[str, list[float]]] = [{}, {}]
    for fn in (base, other):
        fn()  # warm-up
    for _ in range(n):
        for acc, fn in zip(sums, (base, other)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            for e in prof.key_averages():
                t = acc.setdefault(e.key, [0.0, 0.0])
                t[0] += e.self_cpu_time_total / n / 1000
                t[1] += e.count / n
    a, b = sums
    ta, tb = sum(v[0] for v in a.values()), sum(v[0] for v in b.values())
    print(f"# profile, {n} steps each (alternating): self CPU per step default/avg {ta:.1f} ms, mpvg/avg {tb:.1f} ms "
          f"({tb / ta:.3f}); ms per step (calls per step):")
    zero = [0.0, 0.0]
    added = [k for k in set(a) | set(b) if round(b.get(k, zero)[1]) != round(a.get(k, zero)[1])]
    same = [k for k in set(a) & set(b) if k not in added]
    tot = sum(b.get(k, zero)[0] - a.get(k, zero)[0] for k in added)
    print(f"#  operators mpvg calls more (or less) often: {len(added)}, net {tot:+.2f} ms = {tot / ta:+.4f} of a default step")
    for k in sorted(added, key=lambda k: -abs(b.get(k, zero)[0] - a.get(k, zero)[0]))[:top]:
        (xa, ca), (xb, cb) = a.get(k, zero), b.get(k, zero)
        print(f"  {k:50s} default {xa:8.2f} ({ca:4.0f})  mpvg {xb:8.2f} ({cb:4.0f})  diff {xb - xa:+8.2f}")
    tot = sum(b[k][0] - a[k][0] for k in same)
    print(f"#  operators called equally often (same work; their difference is noise): net {tot:+.2f} ms "
          f"= {tot / ta:+.4f} of a default step")
    for k in sorted(same, key=lambda k: -abs(b[k][0] - a[k][0]))[:top // 2]:
        print(f"  {k:50s} default {a[k][0]:8.2f} ({a[k][1]:4.0f})  mpvg {b[k][0]:8.2f} ({b[k][1]:4.0f})  "
              f"diff {b[k][0] - a[k][0]:+8.2f}")


def _extra_ops(model_name: str, extra: dict, batch_size: int, device: str):
    """Exactly the operations mpvg adds to a default step, at the model's shapes, forward and backward.

    Timing them alone bounds the scheme's cost without the run-to-run noise of two full steps.
    """
    m = timm.create_model(model_name, pe_mode="mpvg", **extra).to(device)
    pos = m.pos_embed.detach().clone().requires_grad_(True)
    norms = [blk.pe_norm for blk in m.blocks if blk.pe_norm is not None] + [m.last_pe_norm]
    T, D = pos.shape[1], pos.shape[2]
    acts = torch.randn(batch_size, T, D, device=device, requires_grad=True)

    def run():
        pe, out = pos, acts
        for norm in norms[:-1]:
            pe = norm(pe)
            out = out + pe  # the add into each block's attention input
        out = out + m.last_pe_norm(pos)
        out.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


if __name__ == "__main__":
    main()
