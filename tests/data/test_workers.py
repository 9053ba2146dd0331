"""The default number of data-loader workers follows the usable cores and the device."""

from __future__ import annotations

import os

import pytest

from pe_probe.data.workers import default_num_workers, usable_cpus


@pytest.mark.parametrize("device, cpus, processes, expected", [
    ("cpu", 1, 1, 0), ("cpu", 2, 1, 0),          # every core is busy with the model's own threads
    ("cpu", 4, 1, 1), ("cpu", 8, 1, 2), ("cpu", 64, 1, 4),
    ("cpu", 16, 4, 1),                            # 4 processes share the 16 cores
    ("cuda", 2, 1, 1), ("cuda", 16, 1, 8), ("cuda", 64, 8, 7), ("cuda", 1, 1, 0),
])
def test_default_workers(device, cpus, processes, expected):
    assert default_num_workers(device, cpus=cpus, processes=processes) == expected
    assert default_num_workers(device, cpus=cpus, processes=processes, in_memory=True) == 0


def test_usable_cpus_is_the_affinity_mask(monkeypatch):
    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers("cuda", cpus=9) == 3  # torchrun's local processes share the cores


def test_training_uses_the_default(tmp_path, monkeypatch):
    import pe_probe
    from pe_probe.training import loop

    from ..training.common import TINY_RUN

    calls = []

    def spy(device, **kw):
        calls.append((str(device), kw))
        return 0

    monkeypatch.setattr(loop, "default_num_workers", spy)
    pe_probe.train(out=tmp_path / "run", **{**TINY_RUN, "epochs": 1})
    assert calls == [("cpu", {"in_memory": True})]  # digits are decoded tensors already
