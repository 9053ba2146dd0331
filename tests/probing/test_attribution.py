"""``pe_probe.attribute`` / ``pe-probe attribute`` with their defaults on a trained model: ``n_steps="auto"``
converges at every site, equals the explicit ``n_steps`` each site stopped at, and its attributions are complete
(checked against ``f(x) - f(baseline)`` from a hand-hooked forward pass, not captum's numbers)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import pe_probe
import pe_probe.data
from pe_probe.cli import main
from pe_probe.core.causal import AUTO_STEPS, WARN_REL_DELTA

from ..training.common import TINY_RUN

torch.set_num_threads(1)

#: A 16-px MPVG model (4x4 patch grid, 2 blocks of 32 dims): its input site does not converge at 32 steps once
#: trained for a few epochs (rel_delta ~0.15 at 32, ~0.05 at 64, ~0.02 at 128), as the README's digits models.
MODEL = dict(TINY_RUN["model_kwargs"], img_size=16)


@pytest.fixture(scope="module")
def mpvg_run(tmp_path_factory):
    """A digits MPVG run trained for 6 epochs (about 3 s); never modified."""
    return pe_probe.train(out=tmp_path_factory.mktemp("attr") / "run", pe_mode="mpvg",
                          **{**TINY_RUN, "model_kwargs": MODEL, "epochs": 6})


@pytest.fixture(scope="module")
def model_images(mpvg_run):
    """The run's model and the first 32 validation images, normalised as recorded."""
    model = pe_probe.load_model(mpvg_run).eval()
    data = json.loads((mpvg_run / "config.json").read_text())["data"]
    ds = pe_probe.data.build_dataset("digits", split="val", img_size=16, in_chans=1, mean=tuple(data["mean"]),
                                     std=tuple(data["std"]))
    return model, torch.stack([ds[i][0] for i in range(32)])


def per_site(frame: pd.DataFrame, metric: str) -> dict[str, float]:
    rows = frame[frame.metric == metric]
    return dict(zip(rows.site, rows.value))


def test_cli_default_converges_at_every_site(mpvg_run, tmp_path, capsys):
    assert main(["attribute", str(mpvg_run), "--out", str(tmp_path / "auto"), "--no-progress", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and "incomplete" not in out
    frame = pd.read_csv(tmp_path / "auto" / "attribution.csv")
    meta = json.loads((tmp_path / "auto" / "attribution.json").read_text())
    rel, steps = per_site(frame, "rel_delta"), per_site(frame, "n_steps")
    assert list(rel) == ["hook_input_pe", "blocks.1.hook_pe", "hook_last_pe"]
    assert all(v <= WARN_REL_DELTA for v in rel.values()), rel
    assert meta["n_steps"] == "auto" and meta["site_steps"] == {k: int(v) for k, v in steps.items()}
    assert steps["hook_input_pe"] > AUTO_STEPS[0] and steps["blocks.1.hook_pe"] == AUTO_STEPS[0]  # only it doubled
    table = {line.split()[1]: line.split() for line in out.splitlines() if line.split()[:1] in (["-2"], ["1"], ["-1"])}
    assert [int(table[s][-1]) for s in rel] == [int(v) for v in steps.values()]  # the table's steps column
    # the old default (32 steps everywhere) is incomplete at the input site, and says so
    assert main(["attribute", str(mpvg_run), "--out", str(tmp_path / "32"), "--no-progress", "--device", "cpu",
                 "--n-steps", "32"]) == 0
    out, err = capsys.readouterr()
    assert "pe-probe attribute: warning: hook_input_pe" in err and "with n_steps=32" in err
    assert per_site(pd.read_csv(tmp_path / "32" / "attribution.csv"), "rel_delta")["hook_input_pe"] > WARN_REL_DELTA


def test_auto_equals_the_explicit_steps_it_stopped_at(model_images):
    model, x = model_images
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        auto = pe_probe.attribute(model, x, batch_size=16, progress=False)
    site_steps = auto.meta["site_steps"]
    assert sorted(set(site_steps.values())) != [AUTO_STEPS[0]]  # some site needed more than one try
    a = auto.frame()
    for site, steps in site_steps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            one = pe_probe.attribute(model, x, sites=[site], n_steps=steps, batch_size=16, progress=False)
        b = one.frame()
        assert one.meta["site_steps"] == {site: steps} and one.meta["n_steps"] == steps
        mine = a[a.site == site].reset_index(drop=True)
        assert list(mine.metric) == list(b.metric)
        np.testing.assert_allclose(mine.value, b.value, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(auto.pe_maps[site], one.pe_maps[site], rtol=2e-4, atol=1e-6)
    # a one-shot iterator of batches is read once and kept for the later tries: the same numbers
    once = pe_probe.attribute(model, iter(x.split(16)), batch_size=16, progress=False)
    assert once.meta["site_steps"] == site_steps
    np.testing.assert_allclose(once.frame().value, a.value, rtol=1e-6, atol=1e-9)
    tries = sorted(set(AUTO_STEPS[:AUTO_STEPS.index(max(site_steps.values())) + 1]))
    assert auto.meta["cost"]["backwards_per_image"] == sum(
        t * sum(s >= t for s in site_steps.values()) for t in tries)


# the tokens and the PE term of each site, by their hook names (not the analysis's Site objects)
TERMS = {"hook_input_pe": "patch_embed", "blocks.1.hook_pe": "blocks.1.hook_tok", "hook_last_pe": "hook_last_ln_out"}


def hand_fdiff(model, x: torch.Tensor, site: str, tgt: torch.Tensor) -> torch.Tensor:
    """``f(x) - f(baseline)`` per image: the target logit intact, minus the logit with the site's tokens zeroed and
    its PE replaced by the mean of its rows (the default baseline), by plain forward hooks."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        fx = model(x).gather(1, tgt[:, None])[:, 0]
        hooks = [modules[TERMS[site]].register_forward_hook(lambda m, a, out: torch.zeros_like(out)),
                 modules[site].register_forward_hook(lambda m, a, out: out.mean(1, keepdim=True).expand_as(out))]
        try:
            fb = model(x).gather(1, tgt[:, None])[:, 0]
        finally:
            for h in hooks:
                h.remove()
    return fx - fb


def test_default_attributions_are_complete(model_images):
    model, x = model_images
    attr = pe_probe.attribute(model, x, batch_size=8, progress=False)
    with torch.no_grad():
        tgt = model(x).argmax(-1)
    frame = attr.frame()
    for site in TERMS:
        v = {m: frame[(frame.site == site) & (frame.metric == m)].value.item() for m in frame.metric.unique()}
        fdiff = hand_fdiff(model, x, site, tgt).double()
        assert fdiff.abs().mean() > 0.1  # the baseline changes the logit: completeness is not 0 = 0
        # mean over images of sum(attributions) = mean f(x) - f(baseline), up to the mean delta captum reports
        gap = abs(v["pe_attr"] + v["tok_attr"] - float(fdiff.mean()))
        assert gap <= v["delta_abs_mean"] + 1e-5, (site, gap, v["delta_abs_mean"])
        assert abs(v["fdiff"] - float(fdiff.mean())) < 1e-4 * max(1.0, abs(v["fdiff"]))
        assert v["delta_abs_mean"] <= WARN_REL_DELTA * float(fdiff.abs().mean()) + 1e-6  # and it is small


def test_auto_warns_only_at_the_cap_and_the_bar_shows_each_try(model_images, capsys):
    # a level no site reaches: every try runs, then one warning, naming the cap
    assert AUTO_STEPS == (32, 64, 128, 256, 512)  # as docs/causal.md and --help say
    model, x = model_images
    with pytest.warns(RuntimeWarning, match=rf"hook_input_pe: .* n_steps='auto' \(up to {AUTO_STEPS[-1]}\)") as rec:
        attr = pe_probe.attribute(model, x[:4], sites=["hook_input_pe"], warn_rel_delta=1e-12, progress=True)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert attr.meta["site_steps"] == {"hook_input_pe": AUTO_STEPS[-1]}
    assert attr.meta["cost"] == {"forwards_per_image": sum(1 + s + 4 for s in AUTO_STEPS),
                                 "backwards_per_image": sum(AUTO_STEPS)}
    err = capsys.readouterr().err
    assert all(f"attribute {s} steps" in err for s in AUTO_STEPS) and "/20 " in err  # 5 tries of 4 images
    with warnings.catch_warnings():  # at the default level the same site stops early, silently
        warnings.simplefilter("error", RuntimeWarning)
        early = pe_probe.attribute(model, x[:4], sites=["hook_input_pe"], progress=False)
    assert early.meta["site_steps"]["hook_input_pe"] < AUTO_STEPS[-1]
