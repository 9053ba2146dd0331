"""Helpers of the zoo families' tests: the agreement and KL of a hand-edited forward, computed independently
(numpy, float64), and reading one value from an ablation frame."""

from __future__ import annotations

import numpy as np
import torch


def agree_kl(intact: torch.Tensor, edited: torch.Tensor) -> tuple[float, float]:
    """Fraction of images whose argmax the edit keeps, and the mean KL(intact || edited) of the softmaxes."""
    a, b = intact.double().numpy(), edited.double().numpy()

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(a), log_softmax(b)
    kl = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
    return float((a.argmax(1) == b.argmax(1)).mean()), kl


def as_frame(result):
    """The tidy frame of a result container (``.frame()``), or the frame itself."""
    return result.frame() if callable(getattr(result, "frame", None)) else getattr(result, "frame", result)


def site_col(frame) -> str:
    """The frame's site column (``site``; ``hook`` in frames written before issue 18)."""
    return "site" if "site" in as_frame(frame).columns else "hook"


def frame_value(frame, site: str, intervention: str, metric: str) -> float:
    """The one value of ``(site, intervention, metric)`` in an ablation frame (or result)."""
    frame = as_frame(frame)
    rows = frame[(frame[site_col(frame)] == site) & (frame["intervention"] == intervention)
                 & (frame["metric"] == metric)]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


def logit_drop(intact: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean over images of the intact model's predicted-class logit minus the edited model's logit there."""
    pred = intact.argmax(-1, keepdim=True)
    return float((intact.gather(1, pred) - edited.gather(1, pred)).double().mean())


def metric(frame, name: str) -> float:
    """The one value of ``metric == name`` in an attribution frame of one site."""
    rows = frame[frame["metric"] == name]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])
