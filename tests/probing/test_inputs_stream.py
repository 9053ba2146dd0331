"""The one data-stream entry point (DataOptions, stream_data): checks, caps, shards, progress bar, labels."""

from __future__ import annotations

import warnings

import pytest
import torch

import pe_probe
from torch.utils.data import DataLoader, TensorDataset

from pe_probe import PEVisionTransformer, attention_stats, patch_shuffle
from pe_probe.core.errors import DataError
from pe_probe.probing import inputs, probe_at_sizes
from pe_probe.probing.adapter import view_model
from pe_probe.probing.inputs import DataOptions, stream_data

from ..conftest import TINY


@pytest.fixture(scope="module")
def view():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return view_model(PEVisionTransformer(**TINY).eval())


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=True), dict(max_images=0),
                                dict(max_images=2.5), dict(max_images=False)])
def test_options_refuse_bad_values(kw):
    with pytest.raises(DataError):
        DataOptions(**kw)


def test_options_normalise():
    o = DataOptions(data_dir=__import__("pathlib").Path("/tmp/x"), mean=[0.5, 0.5, 0.5], std=(1, 1, 1))
    assert o.data_dir == "/tmp/x" and o.mean == (0.5, 0.5, 0.5) and o.std == (1, 1, 1)
    assert o.open_kwargs()["data_dir"] == "/tmp/x"


def test_stream_caps_counts_and_labels(view):
    x = _images(7)
    y = torch.arange(7)
    s = stream_data(DataLoader(TensorDataset(x, y), batch_size=3), view, DataOptions(batch_size=3, max_images=5),
                    desc="t", progress=False)
    assert s.total == 5
    got = list(s)
    assert [len(i) for i, _ in got] == [3, 2] and s.n_images == 5
    assert torch.equal(torch.cat([l for _, l in got]), y[:5])
    assert torch.equal(torch.cat([i for i, _ in got]), x[:5])
    s2 = stream_data(TensorDataset(x, y), view, DataOptions(batch_size=4), desc="t", progress=False, labels=False)
    assert s2.total == 7 and all(l is None for _, l in s2)


def test_stream_bar_closed_on_break_and_error(view, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total=None, **kw):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(inputs, "tqdm", Bar)
    s = stream_data(_images(10), view, DataOptions(batch_size=4), desc="t", per_image=3)
    with s:
        for _ in s:
            break
    assert bars[-1].closed and bars[-1].total == 30 and bars[-1].n == 0
    s = stream_data(_images(10), view, DataOptions(batch_size=4), desc="t", per_image=3)
    with pytest.raises(RuntimeError), s:
        for i, _ in s:
            if s.n_images > 4:
                raise RuntimeError("boom")
    assert bars[-1].closed and bars[-1].n == 12  # the first batch done, the second not
    list(stream_data(_images(10), view, DataOptions(batch_size=4), desc="t"))
    assert bars[-1].closed and bars[-1].n == 10


def test_shape_checked_before_any_image(view):
    with pytest.raises(DataError, match="px"):
        stream_data(torch.randn(4, 3, 8, 8), view, DataOptions(), desc="t")


@pytest.mark.parametrize("fn", [attention_stats, patch_shuffle])
def test_unsharded_functions_check_max_images(view, fn):
    with pytest.raises(DataError, match="max_images"):
        fn(view.model, _images(4), max_images=0, progress=False)


# ---------------------------------------------------------------- every public streaming function, alike
@pytest.fixture(scope="module")
def model():
    return PEVisionTransformer("mpvg", **{**TINY, "depth": 2}).eval()


def labelled(n: int = 9):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, TINY["num_classes"], (n,), generator=g)
    return [(x[i:i + 2], y[i:i + 2]) for i in range(0, n, 2)]  # batches of 2, the last one short


def n_read(name: str, out) -> int:
    if name == "probe_at_sizes":
        (report, _), = out.values()
        return report.meta["n_images"]
    return out.meta["n_images"]


CALLS = {
    "probe": lambda m, d, **kw: pe_probe.probe(m, d, decompose=False, **kw),
    "ablate": lambda m, d, **kw: pe_probe.ablate(m, d, ["zero"], sites=[1], **kw),
    "attribute": lambda m, d, **kw: pe_probe.attribute(m, d, sites=[1], n_steps=2, warn_rel_delta=1e9, **kw),
    "attention_stats": lambda m, d, **kw: pe_probe.attention_stats(m, d, decompose=False, **kw),
    "patch_shuffle": lambda m, d, **kw: pe_probe.patch_shuffle(m, d, blocks=[1, 2], **kw),
    "probe_at_sizes": lambda m, d, **kw: probe_at_sizes(m, d, [24], decompose=False, **kw),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_streaming_function_reads_exactly_max_images(name, model):
    out = CALLS[name](model, labelled(9), max_images=5, progress=False)
    assert n_read(name, out) == 5  # 2 + 2 + 1: the third batch is cut


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("kwargs, match", [(dict(max_images=0), "max_images must be a positive int"),
                                           (dict(max_images=True), "max_images must be a positive int"),
                                           (dict(batch_size=0), "batch_size must be a positive int")])
def test_every_streaming_function_refuses_bad_data_keywords_alike(name, kwargs, match, model):
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(DataError, match=match):
        CALLS[name](model, x, progress=False, **kwargs)
