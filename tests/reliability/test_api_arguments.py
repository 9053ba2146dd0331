"""API arguments that are checked before any work: a bool is not a count, a seed is an int, a model is a name,
and the attribution's batch, map and step counts are in range (cases API24, AP11, AP20, AP21, AP24, AP34, AT07,
AT08, and ``--n-steps 1000000``)."""

from __future__ import annotations

import pytest

import pe_probe


@pytest.fixture(scope="module")
def model(digits_run_master):
    return pe_probe.load_run(digits_run_master).model


@pytest.mark.parametrize("call, kwargs, match", [
    pytest.param("probe", dict(max_images=True), "max_images", id="API24"),
    pytest.param("ablate", dict(max_images=True), "max_images", id="AP20"),
    pytest.param("attribute", dict(max_images=True), "max_images", id="AP21"),
    pytest.param("ablate", dict(seed="x"), "seed='x'", id="AP34"),
    pytest.param("attribute", dict(internal_batch_size=0), "internal_batch_size=0", id="AP24-AT07"),
    pytest.param("attribute", dict(n_maps=-1), "n_maps=-1", id="AT08"),
    pytest.param("attribute", dict(n_steps=1_000_000), "n_steps=1000000", id="n_steps-1e6"),
])
def test_bad_arguments_are_refused_before_any_work(call, kwargs, match, model):
    """API24, AP20, AP21 (``max_images=True``), AP34 (``seed='x'``), AP24 / AT07 (``internal_batch_size=0``, the
    API under ``attribute --internal-batch-size 0``), AT08 (``n_maps=-1``, under ``--n-maps -1``): a precise
    ValueError before any work, so the CLI prints one line and writes nothing."""
    with pytest.raises(ValueError, match=match):
        getattr(pe_probe, call)(model, "digits", progress=False, **kwargs)


def test_load_checkpoint_model_must_be_a_name(digits_run_master):
    """AP11: ``load_checkpoint(weights, model=5)`` raises a precise ValueError."""
    with pytest.raises(ValueError, match="model=5"):
        pe_probe.load_checkpoint(digits_run_master / "model.safetensors", model=5)
