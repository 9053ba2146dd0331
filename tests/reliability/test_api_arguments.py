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
    ("probe", dict(max_images=True), "max_images"),
    ("ablate", dict(max_images=True), "max_images"),
    ("attribute", dict(max_images=True), "max_images"),
    ("ablate", dict(seed="x"), "seed='x'"),
    ("attribute", dict(internal_batch_size=0), "internal_batch_size=0"),
    ("attribute", dict(n_maps=-1), "n_maps=-1"),
    ("attribute", dict(n_steps=1_000_000), "n_steps=1000000"),
])
def test_bad_arguments_are_refused_before_any_work(call, kwargs, match, model):
    with pytest.raises(ValueError, match=match):
        getattr(pe_probe, call)(model, "digits", progress=False, **kwargs)


def test_load_checkpoint_model_must_be_a_name(digits_run_master):
    with pytest.raises(ValueError, match="model=5"):
        pe_probe.load_checkpoint(digits_run_master / "model.safetensors", model=5)
