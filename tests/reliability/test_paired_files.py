"""Files that belong together carry one id: an ablation or attribution pair (CSV + JSON) mixed by a kill between
its two renames is refused on read in one line, and a run's cached pair is computed again instead of used
(cases KP01, KP02, KP04)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import pe_probe
from pe_probe.analysis.causal import read_ablation, read_attribution, save_ablation, save_attribution
from pe_probe.core.causal import AblationResult, AttributionResult
from pe_probe.pipeline.causal import ablate_run


def _ablation(n):
    rows = [("hook_input_pe", "abs", -2, "zero", "agree", 0.25 * n), ("blocks.1.hook_pe", "abs", 1, "mean", "kl",
                                                                          0.1 / n)]
    return AblationResult(rows, {"n_images": n})


def _attribution(n):
    maps = {"blocks.1.hook_pe": np.full((1, 2, 2), float(n))}
    return AttributionResult([("blocks.1.hook_pe", "abs", 1, "pe_share", 1 / n)], {"n_images": n}, maps, {})


def _killed_between_renames(monkeypatch, json_name, save):
    """``save()`` stopped just before its JSON is renamed into place (after the CSV was)."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(str(dst)) == json_name:
            raise KeyboardInterrupt  # what a SIGKILL there leaves: the new CSV beside the old JSON
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save()
    monkeypatch.setattr(os, "replace", real)


def test_a_mixed_ablation_pair_is_refused(tmp_path, monkeypatch):
    """KP01: an ablation pair mixed by a kill between its renames is refused by ``read_ablation``."""
    save_ablation(_ablation(20), tmp_path)
    assert read_ablation(tmp_path).attrs == {"n_images": 20}  # the pair id is not part of the attrs
    _killed_between_renames(monkeypatch, "ablation.json", lambda: save_ablation(_ablation(40), tmp_path))
    with pytest.raises(pe_probe.CheckpointError, match="come from different runs") as err:
        read_ablation(tmp_path)
    assert "ablation.csv" in str(err.value) and "\n" not in str(err.value)


def test_a_mixed_attribution_pair_is_refused(tmp_path, monkeypatch):
    """KP02: an attribution pair mixed by a kill between its renames is refused by ``read_attribution``."""
    save_attribution(_attribution(2), tmp_path)
    assert read_attribution(tmp_path).meta == {"n_images": 2}
    _killed_between_renames(monkeypatch, "attribution.json", lambda: save_attribution(_attribution(4), tmp_path))
    with pytest.raises(pe_probe.CheckpointError, match="come from different runs"):
        read_attribution(tmp_path)


def test_a_runs_mixed_ablation_cache_is_computed_again(digits_run, monkeypatch):
    """KP04: the run cache of ``figures`` (RUN/ablation.*) mixed by a killed re-ablation is computed again."""
    first = ablate_run(digits_run, max_images=8, progress=False)
    assert first.attrs["n_images"] == 8
    _killed_between_renames(monkeypatch, "ablation.json",
                            lambda: ablate_run(digits_run, max_images=16, recompute=True, progress=False))
    again = ablate_run(digits_run, max_images=8, progress=False)  # not the 16-image CSV under the 8-image JSON
    back = read_ablation(digits_run)
    assert again.attrs["n_images"] == back.attrs["n_images"] == 8
    assert np.array_equal(back["value"].to_numpy(), first["value"].to_numpy(), equal_nan=True)
