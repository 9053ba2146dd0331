"""probe(): every metric against numpy on captured tensors, streaming invariance, fixed memory, no leaks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pe_probe.analysis import last_ln_params, pe_similarity_matrix, summary_frame
from pe_probe import PEVisionTransformer, ProbeReport, capture, probe
from pe_probe.core.errors import DataError
from pe_probe.probing.accumulate import RunningStats
from pe_probe.probing.adapter import view_model

from ..conftest import TINY
from .reference import all_forward_hooks, assert_metrics_match, expected_metrics, randomize_norms

N_IMAGES = 20


def build(**kw) -> PEVisionTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PEVisionTransformer(**{**TINY, **kw})
    randomize_norms(m)
    return m.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(N_IMAGES, 3, 16, 16, generator=torch.Generator().manual_seed(3))


CONFIGS = [
    dict(pe_mode="mpvg"),  # GAP, PE in the Last LN
    dict(pe_mode="lape"),  # class token, block 0 receives a PE
    dict(pe_mode="pvg", global_pool="token", last_ln_pe=2),  # Last LN fed with pos_2
    dict(pe_mode="default"),  # no PE rows at all
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_every_metric_matches_numpy_on_captured_tensors(kw, images):
    m = build(**kw)
    cap = capture(m, images)
    report = probe(m, images, batch_size=7, progress=False, n_norm_maps=5)
    P = m.num_prefix_tokens
    assert_metrics_match(report, expected_metrics(cap, m.norm, len(m.blocks), P, m.global_pool, m))
    # mean maps, PE maps and norm maps themselves
    for l in range(len(m.blocks)):
        tok, pe = report.mean_maps(l)
        np.testing.assert_allclose(tok, cap[f"blocks.{l}.hook_tok"].double().mean(0).numpy(), atol=1e-5)
        if f"blocks.{l}.hook_pe" in cap:
            np.testing.assert_allclose(pe, cap[f"blocks.{l}.hook_pe"][0].double().numpy(), atol=1e-6)
            sim = pe_similarity_matrix(report, l)
            p = cap[f"blocks.{l}.hook_pe"][0, P:].double()
            np.testing.assert_allclose(sim, torch.nn.functional.cosine_similarity(p[:, None], p[None], dim=-1),
                                       atol=1e-6)
        else:
            assert pe is None
    tok, pe = report.mean_maps(-1)
    np.testing.assert_allclose(tok, cap["hook_last_ln_out"].double().mean(0).numpy(), atol=1e-5)
    assert (pe is None) == ("hook_last_pe" not in cap)
    maps = report.token_norm_maps()
    out = cap["hook_last_ln_out"] + (cap["hook_last_pe"] if "hook_last_pe" in cap else 0)
    np.testing.assert_allclose(maps["before"], cap["hook_last_ln_in"][:5, P:].norm(dim=-1).reshape(5, 4, 4),
                               rtol=1e-5)
    np.testing.assert_allclose(maps["after"], out[:5, P:].norm(dim=-1).reshape(5, 4, 4), rtol=1e-5)
    params = last_ln_params(report)
    np.testing.assert_array_equal(params.gamma, m.norm.weight.detach().double().numpy())
    meta = report.meta
    assert (meta["n_images"], meta["depth"], meta["embed_dim"], meta["grid"]) == (N_IMAGES, 4, 32, [4, 4])
    assert meta["pe_derived"] is False and meta["receiving_blocks"] == m.pe_receiving_blocks()
    assert meta["last_ln_pe"] == m.pe_config.last_ln_pe and meta["num_prefix_tokens"] == P


def test_batch_size_and_input_kind_do_not_change_results(images):
    m = build(pe_mode="lape")
    reports = [
        probe(m, images, batch_size=7, progress=False),
        probe(m, images, batch_size=64, progress=False),
        probe(m, DataLoader(TensorDataset(images, torch.zeros(N_IMAGES)), batch_size=3), progress=False),
        probe(m, TensorDataset(images, torch.zeros(N_IMAGES)), batch_size=11, progress=False),
        probe(m, [{"image": images[:9]}, {"image": images[9:]}], progress=False),
    ]
    ref = reports[0]
    for r in reports[1:]:
        assert set(r.arrays) == set(ref.arrays) and r.meta == ref.meta
        for k in ref.arrays:
            np.testing.assert_allclose(r.arrays[k], ref.arrays[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_accumulator_size_does_not_depend_on_the_number_of_images():
    m = build(pe_mode="mpvg")
    view = view_model(m)
    sizes, shapes = [], []
    for n in (8, 40):
        stats = RunningStats(view, n_norm_maps=4)
        for chunk in torch.randn(n, 3, 16, 16).split(8):
            stats.update(capture(m, chunk, names=stats.hooks_read()))
        sizes.append(stats.state_nbytes())
        shapes.append({k: tuple(v.shape) for k, v in stats.state.items()})
        assert stats.n_images == n and stats.n_maps == 4
    assert sizes[0] == sizes[1] > 0
    assert shapes[0] == shapes[1]  # same tensors, same shapes: nothing is appended per batch


def test_max_images_and_norm_map_cap(images):
    m = build(pe_mode="pvg")
    r = probe(m, images, batch_size=6, max_images=10, n_norm_maps=3, progress=False)
    assert r.meta["n_images"] == 10 and r.token_norm_maps()["before"].shape == (3, 4, 4)
    r2 = probe(m, images[:10], batch_size=64, n_norm_maps=3, progress=False)
    for k in r.arrays:
        np.testing.assert_allclose(r.arrays[k], r2.arrays[k], rtol=1e-5, atol=1e-6, err_msg=k)
    r3 = probe(m, images[:2], n_norm_maps=8, progress=False)
    assert r3.token_norm_maps()["after"].shape == (2, 4, 4)


def test_eval_mode_inference_mode_and_train_flag_restored(images):
    m = build(pe_mode="mpvg", drop_rate=0.5, proj_drop_rate=0.5)
    m.train()
    a = probe(m, images, progress=False)
    assert m.training
    m.eval()
    b = probe(m, images, progress=False)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    assert all(p.grad is None for p in m.parameters())


def test_mixed_train_flags_come_back_module_by_module(images):
    m = build(pe_mode="mpvg")
    m.train()
    m.blocks[0].eval()  # e.g. a frozen block: must stay in eval mode after the probe
    before = {n: mod.training for n, mod in m.named_modules()}
    probe(m, images[:2], progress=False)
    assert {n: mod.training for n, mod in m.named_modules()} == before
    assert not m.blocks[0].training and not m.blocks[0].attn.training and m.blocks[1].training


def test_no_hook_survives_an_error_mid_stream(images, monkeypatch):
    m = build(pe_mode="mpvg")
    m.train()
    good = images[:4]

    def batches():
        yield good
        yield torch.randn(4, 3, 8, 8)  # wrong size on the second batch

    with pytest.raises(DataError, match="8x8 px"):
        probe(m, batches(), progress=False)
    assert all_forward_hooks(m) == 0 and m.training

    calls = {"n": 0}
    real = m.blocks[1].forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(m.blocks[1], "forward", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        probe(m, images, batch_size=4, progress=False)
    assert all_forward_hooks(m) == 0 and m.training


@pytest.mark.parametrize(
    "data,kw,match",
    [
        (torch.randn(4, 1, 16, 16), {}, "1 channels"),
        (torch.randn(4, 3, 16, 16), {"batch_size": 0}, "batch_size"),
        (torch.randn(4, 3, 16, 16), {"max_images": 0}, "max_images"),
        ([], {}, "no images"),
        (12, {}, "data must be"),
        ([("not", "a tensor")], {}, "torch.Tensor"),
        ([{"label": 1}], {}, "keys"),
    ],
)
def test_bad_arguments_raise_and_leave_no_hooks(data, kw, match):
    m = build(pe_mode="pvg")
    with pytest.raises(DataError, match=match):
        probe(m, data, progress=False, **kw)
    assert all_forward_hooks(m) == 0


def test_dataset_name_goes_through_pe_probe_data(monkeypatch, images):
    calls = []

    def build_dataset(name, *, data_dir=None, split="val", img_size=224, in_chans=3, mean=None, std=None):
        calls.append(dict(name=name, data_dir=data_dir, split=split, img_size=img_size, in_chans=in_chans,
                          mean=mean, std=std))
        return TensorDataset(images, torch.zeros(len(images), dtype=torch.long))

    import pe_probe.data

    monkeypatch.setattr(pe_probe.data, "build_dataset", build_dataset)
    m = build(pe_mode="pvg")
    r = probe(m, "toyset", data_dir="/somewhere", batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, progress=False)
    assert calls == [dict(name="toyset", data_dir="/somewhere", split="val", img_size=16, in_chans=3,
                          mean=(0.5,) * 3, std=(0.25,) * 3)]
    assert isinstance(r, ProbeReport) and r.meta["n_images"] == N_IMAGES
    assert (r.meta["data"], r.meta["data_dir"], r.meta["split"]) == ("toyset", "/somewhere", "val")
    ref = probe(m, images, progress=False)
    for k in ref.arrays:
        np.testing.assert_allclose(r.arrays[k], ref.arrays[k], rtol=1e-5, atol=1e-6)


def test_report_roundtrip_from_a_real_probe(tmp_path, images):
    r = probe(build(pe_mode="mpvg"), images, progress=False, run="runs/x")
    back = ProbeReport.load(r.save(tmp_path / "rep"))
    assert back.meta == r.meta and back.meta["run"] == "runs/x"
    import pandas as pd

    pd.testing.assert_frame_equal(summary_frame(back), summary_frame(r))


def test_real_bundled_dataset_by_name():
    """scikit-learn's digits ship with the package: no download."""
    m = PEVisionTransformer(pe_mode="pvg", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=10, in_chans=1)
    r = probe(m, "digits", batch_size=32, max_images=40, progress=False)
    assert r.meta["n_images"] == 40 and r.meta["in_chans"] == 1
    assert np.isfinite(summary_frame(r).value).all()


def _numpy_pe_stats(batches: list[dict], name_tok: str, name_pe: str) -> dict:
    """Per-image Pearson mean and per-token cosine mean of one layer, numpy, PEs (1 or B, T, D) per batch."""
    corrs, coss = [], []
    for b in batches:
        tok = b[name_tok].double().numpy()
        pe = np.broadcast_to(b[name_pe].double().numpy(), tok.shape)
        for t, p in zip(tok, pe):
            corrs.append(np.corrcoef(t.ravel(), p.ravel())[0, 1])
            coss.append((t * p).sum(-1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(p, axis=-1)))
    return {"corr": np.mean(corrs), "cos": np.mean(coss, axis=0)}


def test_pe_side_follows_pes_that_change_between_batches_or_per_image(images):
    m = build(pe_mode="mpvg")
    stats = RunningStats(view_model(m))
    names = stats.hooks_read()
    first = capture(m, images[:5], names=names)
    with torch.no_grad():
        m.pos_embed.add_(torch.randn(m.pos_embed.shape, generator=torch.Generator().manual_seed(1)))
    second = capture(m, images[5:8], names=names)  # another batch size and other PEs
    third = {**second, **{n: t + 0.3 * torch.randn(3, *t.shape[1:], generator=torch.Generator().manual_seed(2))
                          for n, t in second.items() if n == "blocks.1.hook_pe"}}  # one layer: a PE per image
    batches = [first, second, third, first]
    for b in batches:
        stats.update(b)
    arr = stats.arrays()
    for l in range(len(m.blocks)):
        if f"blocks.{l}.hook_pe" not in names:
            continue
        want = _numpy_pe_stats(batches, f"blocks.{l}.hook_tok", f"blocks.{l}.hook_pe")
        np.testing.assert_allclose(arr[f"corr_img@{l}"][1], want["corr"], rtol=1e-5, err_msg=str(l))
        np.testing.assert_allclose(arr[f"tok_pe_cos@{l}"], want["cos"], rtol=1e-5, atol=1e-6, err_msg=str(l))
        pe_sum = sum(np.broadcast_to(b[f"blocks.{l}.hook_pe"].double().numpy(), b[f"blocks.{l}.hook_tok"].shape).sum(0)
                     for b in batches)
        np.testing.assert_allclose(arr[f"pe_map@{l}"], pe_sum / 16, rtol=1e-6, atol=1e-7, err_msg=str(l))
    assert third["blocks.1.hook_pe"].shape[0] == 3


def test_extra_meta_is_recorded_but_cannot_replace_computed_keys(images):
    m = build(pe_mode="pvg")
    r = probe(m, images, progress=False, meta={"checkpoint": "w.pth", "weights_key": "model"})
    assert r.meta["checkpoint"] == "w.pth" and r.meta["weights_key"] == "model" and r.meta["pe_mode"] == "pvg"
    with pytest.raises(ValueError, match=r"meta may not set \['pe_mode'\]"):
        probe(m, images, progress=False, meta={"pe_mode": "lape"})
