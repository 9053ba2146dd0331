"""Position per layer (pe_probe.probing.position): the decomposition on streams with known parts and against
numpy, streaming ridge against scikit-learn, known decoding answers, the logit decomposition against the
model's own logits, fixed memory, states that add up over workers, and the report round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from pe_probe import PEVisionTransformer, ProbeReport, capture, probe
from pe_probe.analysis import save_report, summary_frame
from pe_probe.analysis.position import chosen_r2, position_decoding, position_variance
from pe_probe.probing.adapter import view_model
from pe_probe.probing.position import (FIT, SCORE, SELECT, LogitDecomposition, PositionProbe, PositionRidge,
                                       PositionSample, VarianceDecomposition, image_set, logit_parts, patch_coords)

from ..conftest import TINY
from .reference import decomposition, np64, randomize_norms


def build(**kw) -> PEVisionTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PEVisionTransformer(**{**TINY, **kw})
    randomize_norms(m)
    return m.eval()


def values(frame) -> dict:
    return {(int(l), m): float(v) for l, m, v in zip(frame.layer, frame.metric, frame.value)}


def synthetic(n=12, N=9, D=5, seed=0):
    """A stream with known, exactly balanced parts: x = mu + pos + img + resid (resid double-centred)."""
    g = np.random.default_rng(seed)
    mu = g.normal(size=D) * 3
    pos = g.normal(size=(N, D)) * 2
    pos -= pos.mean(0)
    img = g.normal(size=(n, D))
    img -= img.mean(0)
    resid = g.normal(size=(n, N, D)) * 0.5
    resid = resid - resid.mean(0) - resid.mean(1, keepdims=True) + resid.mean((0, 1))
    return mu, pos, img, resid, mu + pos[None] + img[:, None] + resid


# --------------------------------------------------------------------------- decomposition
def test_synthetic_stream_shares_recovered_exactly_and_parts_orthogonal():
    mu, pos, img, resid, x = synthetic()
    n, N, D = x.shape
    acc = VarianceDecomposition(1, N, D)
    for part in np.array_split(x, 4):  # batches of unequal size
        acc.update(0, torch.from_numpy(part))
    v = acc.arrays(["0"])["pos_var@0"]
    ss = lambda a: float((a * a).sum())  # noqa: E731
    total = n * ss(pos) + N * ss(img) + ss(resid)
    np.testing.assert_allclose(v[2:], [total, n * ss(pos), N * ss(img), ss(resid)], rtol=1e-12)
    # the parts numpy recovers from the stream are the planted ones, and orthogonal in the balanced design
    d = decomposition(x)
    np.testing.assert_allclose(d["pos"], pos, atol=1e-12)
    np.testing.assert_allclose(d["img"], img, atol=1e-12)
    full = lambda a: np.broadcast_to(a, x.shape)  # noqa: E731
    P, I, R = full(d["pos"][None]), full(d["img"][:, None]), d["resid"]
    for a, b in ((P, I), (P, R), (I, R)):
        assert abs((a * b).sum()) < 1e-9 * total


def test_float32_stream_with_a_large_offset_keeps_its_shares():
    _, _, _, _, x = synthetic(n=40, N=16, D=8)
    x = x + 1000.0  # an offset far above the spread: naive float32 sums of squares would cancel
    acc = VarianceDecomposition(1, 16, 8)
    for part in np.array_split(x.astype(np.float32), 5):
        acc.update(0, torch.from_numpy(part))
    v = acc.arrays(["0"])["pos_var@0"]
    d = decomposition(x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(v[3:] / v[2], np.array([d["ss_pos"], d["ss_img"], d["ss_resid"]]) / d["total"],
                               rtol=1e-4)


def test_pe_share_of_the_position_part():
    _, pos, _, _, x = synthetic(N=9, D=5)
    g = np.random.default_rng(1)
    pe = g.normal(size=(9, 5))
    pe_c = pe - pe.mean(0)
    # position part = 2 * (centred PE) + something orthogonal to it
    other = g.normal(size=(9, 5))
    other -= other.mean(0)
    other -= (other * pe_c).sum() / (pe_c * pe_c).sum() * pe_c
    x = x - pos[None] + (2 * pe_c + other)[None]
    acc = VarianceDecomposition(1, 9, 5)
    acc.update(0, torch.from_numpy(x))
    acc.add_pe(torch.from_numpy(pe + 7.0), len(x))  # a constant offset in the PE changes nothing
    rep = type("R", (), {"meta": {"depth": 0}, "arrays": {k.replace("@0", "@-1"): v for k, v in acc.arrays(["0"]).items()}})
    got = values(position_variance(rep))
    share = 4 * (pe_c ** 2).sum() / (4 * (pe_c ** 2).sum() + (other ** 2).sum())
    assert got[(-1, "pe_pos_coef")] == pytest.approx(2.0, rel=1e-10)
    assert got[(-1, "pe_pos_share")] == pytest.approx(share, rel=1e-10)


@pytest.mark.parametrize("kw", [dict(pe_mode="mpvg"), dict(pe_mode="lape"), dict(pe_mode="default")],
                         ids=lambda kw: kw["pe_mode"])
def test_decomposition_matches_numpy_on_captured_tensors_for_any_batch_size(kw):
    m = build(**kw)
    x = torch.randn(13, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cap = capture(m, x)
    got = values(position_variance(probe(m, x, batch_size=4, progress=False)))
    got1 = values(position_variance(probe(m, x, batch_size=13, progress=False)))
    P = m.num_prefix_tokens  # activations are float32: the shares agree to float32 rounding
    for l, name in [(0, "blocks.0.hook_resid_pre"), (2, "blocks.2.hook_resid_pre"), (-1, "hook_last_ln_in")]:
        d = decomposition(np64(cap[name])[:, P:])
        assert got[(l, "pos_share")] == pytest.approx(d["ss_pos"] / d["total"], rel=1e-5)
        assert got[(l, "img_share")] == pytest.approx(d["ss_img"] / d["total"], rel=1e-5)
        assert got[(l, "resid_share")] == pytest.approx(d["ss_resid"] / d["total"], rel=1e-5)
        assert got[(l, "pos_share")] + got[(l, "img_share")] + got[(l, "resid_share")] == pytest.approx(1, abs=1e-12)
    assert got.keys() == got1.keys()
    for k in got:
        assert got[k] == pytest.approx(got1[k], rel=1e-5, abs=1e-9)
    assert ((0, "pe_pos_share") in got) == m.pe_config.input_add


def test_probe_memory_is_flat_as_images_grow():
    m = build(pe_mode="pvg")
    view = view_model(m)
    sizes = []
    for n in (10, 40):
        pos = PositionProbe(view, decode=True)
        feed = pos.feed()
        for first in range(0, n, 10):
            pos.begin(feed, first, 10)
            pos.begin_ablated(first, 10)
            pos._rows(0, torch.randn(10, 16, 32), pos.var, pos.ridge, pos.sample)
        sizes.append(pos.state_nbytes())
    assert sizes[0] == sizes[1] > 0


# --------------------------------------------------------------------------- decoding
def ridge_inputs(n=15, N=16, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N, D, generator=g, dtype=torch.float64) * 2 + 5  # an offset exercises the centring


def test_streaming_ridge_equals_sklearn_ridge():
    x = ridge_inputs()
    n, N, D = x.shape
    acc = PositionRidge(1, (4, 4), D)
    for first in range(0, n, 4):
        acc.begin(first, min(4, n - first))
        acc.update(0, x[first:first + 4])
    sets = image_set(torch.arange(n)).numpy()
    y = patch_coords((4, 4)).numpy()
    fit = x[torch.from_numpy(sets == FIT)].reshape(-1, D).numpy()
    yfit = np.tile(y, ((sets == FIT).sum(), 1))
    alpha = 0.37 * acc.scale(0)
    coef, icpt = acc.solve(0, alpha)
    ref = Ridge(alpha=alpha, fit_intercept=True).fit(fit, yfit)
    np.testing.assert_allclose(coef, ref.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(icpt, ref.intercept_, rtol=0, atol=1e-8)
    for k in (SELECT, SCORE):
        xs = x[torch.from_numpy(sets == k)].reshape(-1, D).numpy()
        ys = np.tile(y, ((sets == k).sum(), 1))
        assert acc.r2(0, k, coef, icpt) == pytest.approx(r2_score(ys, ref.predict(xs)), abs=1e-8)


def test_decode_states_of_two_workers_add_up_to_one_stream():
    x = ridge_inputs(n=14)
    one = PositionRidge(1, (4, 4), 8), PositionSample(1, 10, 16, 8)
    two = [(PositionRidge(1, (4, 4), 8), PositionSample(1, 10, 16, 8)) for _ in range(2)]
    for first in range(0, 14, 3):
        part = x[first:first + 3]
        for acc in (*one, *two[(first // 3) % 2]):  # batches alternate between the workers
            acc.begin(first, len(part))
            acc.update(0, part)
    for a, (b, c) in zip(one, zip(*two)):
        for key in a.state:
            torch.testing.assert_close(a.state[key], b.state[key] + c.state[key], rtol=1e-12, atol=1e-12)


def identity_model(**kw) -> PEVisionTransformer:
    """Blocks that add nothing (attention and MLP outputs zeroed) and a random PE: x_l = bias + PE."""
    m = build(pe_mode="default", **kw)
    with torch.no_grad():
        for blk in m.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        m.pos_embed.normal_(0, 1.0)
    return m


def test_tokens_that_are_exactly_a_random_pe_decode_perfectly():
    m = identity_model()
    blank = torch.zeros(25, 3, 16, 16)
    report = probe(m, blank, batch_size=10, progress=False, decode=True)
    got = values(position_decoding(report))
    N = 16
    for l in (0, 2, -1):
        assert got[(l, "pos_r2")] > 0.999
        assert got[(l, "pos_acc")] == 1.0
        assert got[(l, "pos_r2_perm")] < 0.05  # labels permuted within each image: nothing to learn
        assert got[(l, "pos_acc_perm")] < 3 / N
        assert got[(l, "pos_r2_ablated")] == pytest.approx(0.0, abs=1e-6)  # PE zeroed: every token the same
        assert got[(l, "pos_acc_ablated")] <= 2 / N
        assert got[(l, "pos_acc_chance")] == 1 / N


def test_no_pe_and_position_free_images_decode_at_chance():
    m = build(pe_mode="default")
    with torch.no_grad():
        m.pos_embed.zero_()  # no PE: the model is equivariant to permuting the patches
    noise = torch.randn(60, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # i.i.d. pixels
    got = values(position_decoding(probe(m, noise, batch_size=20, progress=False, decode=True, decode_images=20)))
    for l in (0, 3, -1):
        assert got[(l, "pos_r2")] < 0.05
        assert got[(l, "pos_acc")] < 3 / 16


def test_chosen_r2_takes_the_select_set_best():
    grid = np.array([[1.0, 2.0, 3.0], [0.1, 0.5, np.nan], [0.2, 0.3, 0.9]])
    assert chosen_r2(grid) == (0.3, 2.0)


# --------------------------------------------------------------------------- logit decomposition
@pytest.mark.parametrize("kw", [dict(pe_mode="default"), dict(pe_mode="pvg"), dict(pe_mode="mpvg"),
                                dict(pe_mode="default", global_pool="avg")], ids=str)
def test_logit_parts_sum_to_the_models_logit_minus_bias(kw):
    m = build(**kw)
    with torch.no_grad():
        m.pos_embed.normal_(0, 1.0)
    x = torch.randn(6, 3, 16, 16)
    cap = capture(m, x)
    parts, total, pred = logit_parts(cap["hook_last_ln_in"], m.norm, m.pool, m.head, cap["hook_input_pe"],
                                     cap.get("hook_last_pe"))
    logits = m(x).double()
    assert torch.equal(pred, logits.argmax(-1))
    want = logits.gather(1, pred[:, None])[:, 0] - m.head.bias.double()[pred]
    torch.testing.assert_close(sum(parts.values()), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(total, want, rtol=0, atol=1e-5)
    assert ("last_pe" in parts) == (kw["pe_mode"] == "mpvg")
    assert parts["pe"].abs().max() > 1e-3  # the PE is a real component here


def test_logit_decomposition_of_a_timm_vit():
    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=4)
    randomize_norms(m)
    with torch.no_grad():
        m.pos_embed.normal_(0, 1.0)
        m.head.weight.normal_(0, 1.0)
    m.eval()
    x = torch.randn(5, 3, 32, 32)
    acc = LogitDecomposition()
    with torch.inference_mode():
        cap = capture(m, x)
        acc.update(cap["hook_last_ln_in"], m.norm, m.pool, m.head, cap["hook_input_pe"])
    a = acc.arrays()
    logits = m(x).detach().double()
    pred = logits.argmax(-1)
    want = (logits.gather(1, pred[:, None])[:, 0] - m.head.bias.detach().double()[pred]).mean()
    assert a["logit_total"][1] == pytest.approx(float(want), abs=1e-5)
    assert a["logit_sum_rmse"][0] < 1e-9
    assert np.nansum(a["logit_parts"][:, 1]) == pytest.approx(float(want), abs=1e-5)


# --------------------------------------------------------------------------- the report
def test_report_round_trip_and_summary(tmp_path):
    m = build(pe_mode="mpvg")
    x = torch.randn(10, 3, 16, 16)
    report = probe(m, x, batch_size=5, progress=False, decode=True)
    assert report.meta["position"] == {"decompose": True, "decode": True, "decode_images": 10,
                                       "pe_term": "hook_input_pe", "logits": True, "skipped": {}}
    save_report(report, tmp_path / "rep")
    back = ProbeReport.load(tmp_path / "rep")
    metrics = set(summary_frame(back).metric)
    assert {"pos_share", "pe_pos_share", "pos_r2", "pos_acc", "pos_r2_ablated", "pe_logit_share",
            "logit_last_pe_share"} <= metrics
    off = probe(m, x, progress=False, decompose=False)
    assert not {"pos_share", "pos_r2", "pe_logit_share"} & set(summary_frame(off).metric)
    with pytest.raises(ValueError, match="decode_images"):
        probe(m, x, progress=False, decode=True, decode_images=2)


def test_cli_decode_flag_saves_the_decoders(tmp_path, capsys):
    from safetensors.torch import save_file

    from pe_probe.cli import main

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=7)
    ckpt = tmp_path / "deit.safetensors"
    save_file(model.state_dict(), str(ckpt))
    from PIL import Image

    g = np.random.default_rng(0)
    for i in range(10):  # two classes: a folder of one class is refused (issue 23)
        folder = tmp_path / "imgs" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["probe", str(ckpt), "--model", "deit_tiny_patch16_224", "--model-arg", "img_size=32", "--model-arg",
            "depth=2", "--data", "imagefolder", "--data-dir", str(tmp_path / "imgs"), "--no-progress", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "rep"), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "pos_r2" in out and "pos_share" in out and "PE's direct share" in out
    metrics = set(summary_frame(ProbeReport.load(tmp_path / "rep")).metric)
    assert {"pos_r2", "pos_acc", "pos_share", "pe_logit_share"} <= metrics
    assert main([*args, "--out", str(tmp_path / "plain"), "--no-decompose"]) == 0
    metrics = set(summary_frame(ProbeReport.load(tmp_path / "plain")).metric)
    assert not {"pos_r2", "pos_share", "pe_logit_share"} & metrics


def test_position_cost_benchmark_reports_flat_state():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import position_cost

    before = torch.get_num_threads()
    shares = position_cost.main(["--tiny", "--batches", "1", "--batch-size", "8", "--sizes", "5", "15",
                                 "--threads", "1"])
    assert shares["state_flat"] == 1.0 and {"decomposition", "logit", "decode_stream", "decode_fit"} <= set(shares)
    assert torch.get_num_threads() == before


def test_decomposition_rows_in_any_order_and_batch_sizes_add_the_same_sums():
    """The deferred float64 step (VarianceDecomposition.flush) adds each pending row where it belongs, whatever
    the order the rows come in (index path) and wherever a batch size changes or a row repeats (early flush)."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 9, 4, generator=g, dtype=torch.float64) * 2 + 3 for _ in range(3)]
    ref = VarianceDecomposition(3, 9, 4)
    for i, x in enumerate(xs):
        ref.update(i, x)
    got = VarianceDecomposition(3, 9, 4)
    for i in (2, 0, 1):  # out of order: one flush through index_add_
        got.update(i, xs[i])
    for k in ref.state:
        torch.testing.assert_close(got.state[k], ref.state[k], rtol=1e-12, atol=1e-12)
    # numpy on the same tensors: the sums the state holds, row by row
    for i, x in enumerate(xs):
        a = x.numpy()
        np.testing.assert_allclose(got.state["tok_sum"][i].numpy(), a.sum(0), rtol=1e-12)
        np.testing.assert_allclose(got.state["sq_sum"][i].item(), (a * a).sum(), rtol=1e-12)
        np.testing.assert_allclose(got.state["img_sq"][i].item(), (a.sum(1) ** 2).sum(), rtol=1e-12)
    mixed = VarianceDecomposition(1, 9, 4)  # a row twice, with another batch size in between
    for x in (xs[0], xs[1][:2], xs[2]):
        mixed.update(0, x)
    allx = torch.cat([xs[0], xs[1][:2], xs[2]]).numpy()
    np.testing.assert_allclose(mixed.state["tok_sum"][0].numpy(), allx.sum(0), rtol=1e-12)
    assert mixed.state["count"][0].item() == len(allx)


@pytest.mark.parametrize("pool_kind", ["token", "avg"])
@pytest.mark.parametrize("per_image_pe", [False, True], ids=["shared_pe", "pe_per_image"])
def test_logit_parts_match_numpy_through_the_ln_for_any_stream_layout(pool_kind, per_image_pe):
    """logit_parts against numpy's float64 formula on the same tensors: each component through the frozen LN
    (centred per token, divided by the stream's sigma, times gamma), pooled, dotted with the predicted row; the
    stream in (B, D, T) memory order (a ViT without a class token) and a PE shared by the batch or per image."""
    g = torch.Generator().manual_seed(5)
    B, T, D, C = 4, 7, 6, 3
    x = (torch.randn(B, D, T, generator=g) * 2 + 0.5).transpose(1, 2)  # (B, T, D) view of a (B, D, T) buffer
    pe = torch.randn(B if per_image_pe else 1, T, D, generator=g)
    last_pe = torch.randn(1, T, D, generator=g)
    norm = torch.nn.LayerNorm(D, eps=1e-6)
    head = torch.nn.Linear(D, C)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3, generator=g)
        norm.bias.normal_(0, 0.3, generator=g)
    pool = (lambda z: z[:, 0]) if pool_kind == "token" else (lambda z: z[:, 1:].mean(1))
    parts, total, pred = logit_parts(x, norm, pool, head, pe, last_pe)

    a, p, lp = (t.double().numpy() for t in (x, pe, last_pe))
    gam, bet = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
    W, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    sigma = np.sqrt(a.var(-1, keepdims=True) + 1e-6)
    ln = lambda c: (c - c.mean(-1, keepdims=True)) / sigma * gam  # noqa: E731
    npool = (lambda z: z[:, 0]) if pool_kind == "token" else (lambda z: z[:, 1:].mean(1))  # noqa: E731
    comps = {"pe": npool(ln(np.broadcast_to(p, a.shape))), "rest": npool(ln(a - p)),
             "ln_beta": np.broadcast_to(bet, (B, D)), "last_pe": npool(np.broadcast_to(lp, a.shape))}
    logits = sum(comps.values()) @ W.T + bias
    k = logits.argmax(-1)
    np.testing.assert_array_equal(pred.numpy(), k)
    for name, v in comps.items():
        np.testing.assert_allclose(parts[name].numpy(), (v * W[k]).sum(-1), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(total.numpy(), logits[np.arange(B), k] - bias[k], rtol=1e-5, atol=1e-6)
    # and the LN's own output: the components before pooling add up to LN(x_L) - beta + beta
    with torch.no_grad():
        want = pool(norm(x)).double()
    np.testing.assert_allclose(comps["pe"] + comps["rest"] + comps["ln_beta"], want.numpy(), rtol=1e-5, atol=1e-5)


def test_decomposition_sums_of_squares_keep_float32_per_image_precision():
    """A DeiT-Ti-sized float32 batch (32 x 196 x 192, (B, D, N) memory order): the total sum of squares equals numpy
    float64 on the same tensor to 2e-6 relative. Its squares are summed per image in float32 (N x D entries),
    then in float64; one float32 norm of all 1.2 M entries is off by ~3e-5."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(32, 192, 196, generator=g) * 3 + 1).transpose(1, 2)
    acc = VarianceDecomposition(1, 196, 192)
    acc.update(0, x)
    v = acc.arrays(["0"])["pos_var@0"]
    a = x.double().numpy()
    total = ((a - a.mean((0, 1))) ** 2).sum()
    pos = 32 * ((a.mean(0) - a.mean((0, 1))) ** 2).sum()
    assert v[2] == pytest.approx(total, rel=2e-6)
    assert v[3] == pytest.approx(pos, rel=2e-5)  # a small part of the total: float32 rounding of its sums
