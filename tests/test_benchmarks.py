"""Every benchmark script runs once at a tiny size, so the scripts keep working. Timings are never asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_TRAIN = "img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=2,mlp_ratio=2.0,num_classes=10"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_overhead_tiny(capsys):
    ratios = load("probe_overhead").main(["--tiny", "--no-torchlens", "--repeats", "1", "--batches", "1",
                                          "--batch-size", "4"])
    assert set(ratios) == {"plain", "pe_probe", "hook_cache", "plain (A/A)", "stats_share", "ops_forward",
                           "ops_layer", "ops_stacked"}
    assert all(r > 0 for r in ratios.values())
    out = capsys.readouterr().out
    assert "throughput vs plain" in out and "per round" in out and "aten ops per batch (stacked" in out


def test_probe_memory_tiny(monkeypatch, capsys):
    mem = load("probe_memory")

    def in_process(method, n, args):  # the child's code without the fresh process (its peak is meaningless here)
        mem.child(type(args)(**{**vars(args), "method": method, "n": n}))
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(mem, "run_child", in_process)
    result = mem.main(["--tiny", "--sizes", "8", "16", "--cache-sizes", "8", "16", "--batch-size", "4"])
    assert set(result) == {"probe_growth", "cache_growth"}
    assert "peak growth" in capsys.readouterr().out


def test_probe_memory_child_runs_in_a_fresh_process():
    out = subprocess.run([sys.executable, str(BENCH / "probe_memory.py"), "--child", "hook_cache", "--n", "4",
                          "--batch-size", "4", "--tiny"], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["n"] == 4 and row["peak_kib"] >= row["baseline_kib"] > 0 and row["cached_bytes"] > 0


def test_train_step_tiny(capsys):
    load("train_step").main(["--batch-size", "2", "--repeats", "2", "--model-kwargs", TINY_TRAIN, "--profile", "1"])
    out = capsys.readouterr().out
    assert "ratio vs default/avg" in out and "per round" in out
    assert "# profile, 1 steps each" in out and "aten::" in out


def test_train_throughput_tiny(capsys):
    ratios = load("train_throughput").main(["--synthetic", "--images", "16", "--batch-size", "8", "--repeats", "1",
                                            "--warmup", "0", "--workers", "auto", "0", "--model-kwargs", TINY_TRAIN,
                                            "--threads", "1"])
    assert set(ratios) == {"pe-probe (workers 0)", *(k for k in ratios if k.endswith("auto)"))} and len(ratios) == 2
    assert all(r > 0 for r in ratios.values())
    out = capsys.readouterr().out
    assert "hand loop" in out and "ratio vs hand loop" in out and "default workers here" in out


@pytest.mark.parametrize("extra", [[], ["--", "--epochs", "1", "--max-images", "8"]])
def test_reproduce_time_command_parses(extra, capsys):
    assert load("reproduce_time").main(["--dry-run", *extra]) is None
    assert "pe_probe reproduce" in capsys.readouterr().out


def test_probe_history_cost_tiny(capsys):
    result = load("probe_history_cost").main(["--repeats", "1", "--epochs", "2", "--probe-every", "1",
                                              "--probe-images", "16", "--model-kwargs", "embed_dim=16", "depth=2",
                                              "num_heads=2"])
    assert set(result) == {"ratio", "share"} and result["ratio"] > 0 and 0 < result["share"] < 1
    assert "in-run share" in capsys.readouterr().out


def test_ablate_cost_tiny(capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = load("ablate_cost").main(["--tiny", "--pe-modes", "pvg", "default", "--batch-size", "2", "--repeats",
                                         "1", "--n-steps", "2", "--threads", "1"])
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert set(rows) == {"pvg", "default"}
    assert rows["pvg"]["sites"] == 4 and rows["pvg"]["counted_plain"] == 3 * 4 + 1  # input + blocks 1..3
    assert rows["pvg"]["counted_prefix"] < rows["pvg"]["counted_plain"] and rows["default"]["counted_plain"] == 4
    assert all(v > 0 for r in rows.values() for v in r.values())
    out = capsys.readouterr().out
    assert "x plain" in out and "attribute n=2" in out and "per round" in out
    assert threads_after == 2  # --threads 1 held only for the benchmark (the suite runs in this process)


def test_scan_cost_tiny(capsys):
    out = load("scan_cost").main(["--synthetic", "16", "12", "--images", "16", "--repeats", "1", "--batch-size", "8",
                                  "--model-kwargs", "patch_size=8,embed_dim=32,depth=1,num_heads=2",
                                  "--no-augment"])
    assert out["scan_s"] > 0 and out["epoch_s"] > 0
    assert "scan / epoch" in capsys.readouterr().out


def test_attention_cost_tiny(capsys):
    out = load("attention_cost").main(["--tiny", "--batch-size", "2", "--repeats", "1", "--threads", "1"])
    assert set(out) == {"plain_s", "plain", "unfused", "attention", "attention (no split)"}
    assert out["plain"] == 1.0 and all(v > 0 for v in out.values())
    assert "x unfused" in capsys.readouterr().out
