"""Issue 21: no host sync per batch, a fixed op count for the stacked strategy, same numbers as before
(saved reference of the pre-issue-21 code), both strategies equal, bf16 autocast within the documented tolerance."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pe_probe import PEVisionTransformer, capture, probe

from ..conftest import TINY
from .reference import assert_metrics_match, expected_metrics, randomize_norms
from .speed_reference import CONFIGS, PATH, arrays, build, images

STRATEGIES = ["layer", "stacked"]

#: aten ops that read a device tensor's value back to the host (a sync on a GPU)
SYNC_OPS = ("_local_scalar_dense", "equal", "nonzero", "is_nonzero", "masked_select", "item", "allclose",
            "_unique", "unique_dim", "unique_consecutive", "repeat_interleave", "tolist", "any.default", "all.default")


class NoSync(TorchDispatchMode):
    """Fails on any op that reads a tensor's value back to the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(name.startswith(f"aten.{op}") for op in SYNC_OPS):
            raise AssertionError(f"host sync inside the probe loop: {name}")
        if name.startswith("aten.index.Tensor") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            raise AssertionError("host sync inside the probe loop: boolean-mask indexing")
        return func(*args, **(kwargs or {}))


class Count(TorchDispatchMode):
    """Counts the aten ops dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _batches(x: torch.Tensor, bs: int, mode: TorchDispatchMode):
    """``x`` in batches; ``mode`` is active from after the first batch until the last one is processed."""
    yield x[:bs]
    with mode:
        for i in range(bs, len(x), bs):
            yield x[i:i + bs]


def test_nosync_mode_catches_a_sync():
    """The checker itself fails on the op the old code ran every batch (torch.equal) and on .item()."""
    a = torch.ones(3)
    with pytest.raises(AssertionError, match="equal"), NoSync():
        torch.equal(a, a)
    with pytest.raises(AssertionError, match="_local_scalar_dense"), NoSync():
        a.sum().item()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cid", list(CONFIGS))
def test_no_host_sync_between_first_and_last_batch(cid, strategy):
    m, x = build(CONFIGS[cid]), images()
    report = probe(m, _batches(x, 6, NoSync()), progress=False, strategy=strategy)
    assert report.meta["n_images"] == len(x)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cid", list(CONFIGS))
def test_same_report_as_the_code_before_issue_21(cid, strategy):
    """Against arrays saved from the pre-issue-21 code (tests/probing/speed_reference.py): 1e-12 relative for
    the per-layer strategy (the same float32 reductions); the stacked strategy reduces a contiguous copy
    (vector_norm instead of a sum of squares on the strided stream), so float32 rounding (1e-5)."""
    ref = np.load(PATH)
    new = arrays(CONFIGS[cid], strategy=strategy, decompose=False)  # issue 21: the statistics it changed
    keys = {k.split("/", 1)[1] for k in ref.files if k.startswith(cid + "/")}
    assert keys == set(new)
    rtol, atol = (1e-12, 1e-13) if strategy == "layer" else (1e-5, 1e-6)
    for k in sorted(keys):
        np.testing.assert_allclose(new[k], ref[f"{cid}/{k}"], rtol=rtol, atol=atol, err_msg=k, equal_nan=True)


@pytest.mark.parametrize("cid", list(CONFIGS))
def test_stacked_matches_numpy_on_captured_tensors(cid):
    m, x = build(CONFIGS[cid]), images()
    cap = capture(m, x)
    report = probe(m, x, batch_size=6, progress=False, n_norm_maps=5, strategy="stacked", decompose=False)
    assert_metrics_match(report, expected_metrics(cap, m.norm, len(m.blocks), m.num_prefix_tokens, m.global_pool))


def _ops_per_batch(m, x, bs, strategy):
    """Statistics' aten ops per batch: (probe of 3 batches - probe of 1) / 2, minus the forward's."""
    def count(fn):
        c = Count()
        with c:
            fn()
        return sum(c.ops.values())
    with torch.inference_mode():
        fwd = (count(lambda: [m(x[i * bs:(i + 1) * bs]) for i in range(3)]) - count(lambda: m(x[:bs]))) / 2
    run = lambda n: probe(m, x[:n * bs], batch_size=bs, progress=False, strategy=strategy,
                          decompose=False)  # noqa: E731 (issue 21 statistics only)
    return (count(lambda: run(3)) - count(lambda: run(1))) / 2 - fwd, fwd


def test_stacked_op_count_does_not_grow_with_depth():
    """The stacked strategy reduces all layers in a fixed number of ops; the per-layer one grows with depth."""
    x = torch.randn(18, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    counts = {}
    for depth in (2, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = PEVisionTransformer(**{**TINY, "depth": depth, "pe_mode": "mpvg"}).eval()
        counts[depth] = {s: _ops_per_batch(m, x, 6, s)[0] for s in STRATEGIES}
    assert counts[2]["stacked"] == counts[6]["stacked"]
    assert counts[6]["layer"] > counts[2]["layer"] + 4 * 5  # at least 5 ops per extra layer
    assert counts[6]["stacked"] < counts[6]["layer"]


#: Documented in docs/probe.md ("Precision and autocast"): under bf16 autocast the metrics equal the float32
#: model's to these tolerances (the difference is the forward pass's own bf16 rounding, not the statistics').
BF16_ATOL = {"cos": 0.03, "norm_rel": 0.03}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bf16_activations_are_reduced_without_bf16_rounding(strategy):
    """A bf16 model (every activation bf16): the report equals float64 numpy on the very bf16 tensors the model
    produced, so the statistics round nothing to bf16 (float32 per-token reductions, float64 sums)."""
    m, x = build(CONFIGS["mpvg"]).to(torch.bfloat16), images()
    cap = capture(m, x)
    assert cap["blocks.1.hook_tok"].dtype == torch.bfloat16
    rep = probe(m, x, batch_size=6, progress=False, n_norm_maps=5, strategy=strategy, decompose=False)
    assert_metrics_match(rep, expected_metrics({k: v.float() for k, v in cap.items()}, m.norm.float(), len(m.blocks),
                                               m.num_prefix_tokens, m.global_pool))
    for l in range(len(m.blocks)):
        tok = cap[f"blocks.{l}.hook_tok"].double()
        # float32 rounding of the per-batch partial sums (bf16 rounding would be ~4e-3)
        np.testing.assert_allclose(rep.arrays[f"tok_map@{l}"], tok.mean(0).numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rep.arrays[f"tok_norm@{l}"],
                                   torch.linalg.vector_norm(tok, dim=-1).mean(0).numpy(), rtol=1e-6)
        pe = cap[f"blocks.{l}.hook_pe"].double() if f"blocks.{l}.hook_pe" in cap else None
        if pe is not None:
            cos = (tok * pe).sum(-1) / (torch.linalg.vector_norm(tok, dim=-1) * torch.linalg.vector_norm(pe, dim=-1))
            np.testing.assert_allclose(rep.arrays[f"tok_pe_cos@{l}"], cos.mean(0).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bf16_autocast_gives_the_float32_metrics(strategy):
    """Under ``torch.autocast('cpu', dtype=torch.bfloat16)`` the metrics equal the float32 model's to BF16_ATOL
    (docs/probe.md); the difference is the forward pass's own bf16 rounding, not the statistics'."""
    m, x = build(CONFIGS["mpvg"]), images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rep16 = probe(m, x, batch_size=6, progress=False, n_norm_maps=5, strategy=strategy, decompose=False)
    rep32 = probe(m, x, batch_size=6, progress=False, n_norm_maps=5, strategy=strategy, decompose=False)
    differs = False
    for k, v in rep32.arrays.items():
        w = rep16.arrays[k]
        differs |= not np.array_equal(w, v, equal_nan=True)
        if "cos" in k or "corr" in k:
            np.testing.assert_allclose(w, v, atol=BF16_ATOL["cos"], err_msg=k, equal_nan=True)
        elif "norm" in k and "gamma" not in k:
            np.testing.assert_allclose(w, v, rtol=BF16_ATOL["norm_rel"], atol=1e-3 * np.nanmax(np.abs(v)),
                                       err_msg=k, equal_nan=True)
    assert differs  # autocast really changed the forward pass


FAMILY_MODELS = {
    "timm_vit_derived_pe": lambda: __import__("timm").create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=5),
    "timm_vit_map_pool": lambda: __import__("timm").create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=5, global_pool="map", class_token=False),
    "eva_rope": lambda: __import__("timm").create_model(
        "eva02_tiny_patch14_224", pretrained=False, img_size=28, embed_dim=32, depth=2, num_heads=2,
        num_classes=5),
    "twins_nonuniform": lambda: __import__("timm").create_model(
        "twins_pcpvt_small", pretrained=False, img_size=32, depths=(1, 1, 1), embed_dims=(16, 32, 32),
        num_heads=(1, 2, 2), sr_ratios=(2, 1, 1), mlp_ratios=(2, 2, 2), num_classes=5),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_no_host_sync_for_other_pe_families(name, strategy):
    torch.manual_seed(0)
    m = FAMILY_MODELS[name]().eval()
    size = getattr(getattr(m, "patch_embed", None), "img_size", (32, 32))
    x = torch.randn(12, 3, *size, generator=torch.Generator().manual_seed(1))
    ref = probe(m, x, batch_size=4, progress=False, strategy="layer")
    report = probe(m, _batches(x, 4, NoSync()), progress=False, strategy=strategy)
    assert report.meta["n_images"] == 12
    for k, v in ref.arrays.items():
        np.testing.assert_allclose(report.arrays[k], v, rtol=1e-5, atol=1e-6, err_msg=k, equal_nan=True)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ring_of_batches_gives_the_batch_by_batch_sums(strategy, monkeypatch):
    """The float64 step run once per ring of batches (several wraps, a smaller last batch) equals it run after
    every batch (a ring of one slot) to float64 rounding (1e-12 relative): only the order of float64 adds differs."""
    from pe_probe.probing import accumulate
    m, x = build(CONFIGS["pvg-token-lastpe"]), torch.cat([images()] * 3)  # 57 images: 28 batches of 2, then 1
    ring = probe(m, x, batch_size=2, progress=False, n_norm_maps=4, strategy=strategy, decompose=False)
    monkeypatch.setattr(accumulate, "RING_IMAGES", 1)  # one slot: the step after every batch
    each = probe(m, x, batch_size=2, progress=False, n_norm_maps=4, strategy=strategy, decompose=False)
    assert set(ring.arrays) == set(each.arrays)
    for k, v in each.arrays.items():
        np.testing.assert_allclose(ring.arrays[k], v, rtol=1e-12, atol=1e-13, err_msg=k, equal_nan=True)


def _assert_same(a, b, rtol=1e-12, atol=1e-13):
    assert set(a.arrays) == set(b.arrays)
    for k, v in a.arrays.items():
        np.testing.assert_allclose(b.arrays[k], v, rtol=rtol, atol=atol, err_msg=k, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_statistics_step_gives_the_eager_report(strategy, monkeypatch):
    """``stats_backend="compile"`` with the float64 step alone compiled (``FUSED_LAYERS`` off) gives the eager report
    to 1e-12, with no fallback warning (so the compiled graph really ran), over full rings and a smaller last batch."""
    from pe_probe.probing import accumulate
    from pe_probe.probing.accumulate import compile_unavailable
    why = compile_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(why)
    monkeypatch.setattr(accumulate, "FUSED_LAYERS", False)
    m, x = build(CONFIGS["pvg-token-lastpe"]), images()
    eager = probe(m, x, batch_size=6, progress=False, n_norm_maps=4, strategy=strategy, decompose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused = probe(m, x, batch_size=6, progress=False, n_norm_maps=4, strategy=strategy, decompose=False,
                      stats_backend="compile")
    _assert_same(eager, fused)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["mpvg", "pvg-token-lastpe"])
def test_compiled_kernels_give_the_eager_report_to_float32_rounding(config):
    """``stats_backend="compile"`` with every kernel compiled (each layer's float32 passes, the float64 step) gives
    the eager report, position analyses included, to float32 rounding (1e-5 relative, docs/probe.md), with no
    fallback warning (the compiled kernels ran), for a stream in (B, D, T) memory order (no class token) and one
    with a class token, over a smaller last batch."""
    from pe_probe.probing import accumulate
    from pe_probe.probing.accumulate import compile_unavailable, layer_partials
    why = compile_unavailable(torch.device("cpu"))
    if why:
        pytest.skip(why)
    m, x = build(CONFIGS[config]), images()
    eager = probe(m, x, batch_size=6, progress=False, n_norm_maps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused = probe(m, x, batch_size=6, progress=False, n_norm_maps=4, stats_backend="compile")
    assert any(k[0] is layer_partials for k in accumulate._KERNELS)  # the compiled kernel was used
    _assert_same(eager, fused, rtol=1e-5, atol=1e-6)


def test_compile_backend_falls_back_to_eager_with_one_warning(monkeypatch):
    """Where torch.compile cannot run (no compiler) or its graph fails, one RuntimeWarning and the eager numbers."""
    from pe_probe.probing import accumulate
    m, x = build(CONFIGS["mpvg"]), images()
    eager = probe(m, x, batch_size=6, progress=False, decompose=False)
    monkeypatch.setattr(accumulate, "compile_unavailable", lambda device: "no C++ compiler (test)")
    with pytest.warns(RuntimeWarning, match="no C.. compiler") as rec:
        rep = probe(m, x, batch_size=6, progress=False, decompose=False, stats_backend="compile")
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    _assert_same(eager, rep)
    monkeypatch.setattr(accumulate, "compile_unavailable", lambda device: None)

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor failed (test)")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="inductor failed") as rec:
        rep = probe(m, x, batch_size=6, progress=False, decompose=False, stats_backend="compile")
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    _assert_same(eager, rep)


def test_stats_backend_is_checked():
    with pytest.raises(ValueError, match="stats_backend"):
        probe(build(CONFIGS["mpvg"]), images(), progress=False, stats_backend="jit")
