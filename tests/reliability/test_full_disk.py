"""A full disk or a file-size limit met while a command writes (simulated in the process: the write of one file's
temporary copy fails with ENOSPC / EFBIG and no file name, as the kernel's ``write`` does, also in the lock's
holder line) is one line naming the file, exit 2, and loses nothing that was there: the previous ``eval.json``,
report or ablation pair stays, a fresh run or report leaves nothing, a run's probe cache stays as it was
(cases D01, D02, D03, D05, FS02, FS05b, FS07). The real limits (``ulimit -f``) are in test_write_failures.py and
test_rerender.py."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

import pe_probe.core.io as io_module
import pe_probe.core.locks as locks_module
from pe_probe.cli import main
from pe_probe.core.io import TEMP_MARK
from pe_probe.core.locks import LOCK_FILE

from ..training.common import cli_args
from .common import listing


def fail_writing(monkeypatch, name: str, code: int) -> None:
    """The write of ``name``'s temporary file fails with ``code`` and no file name (checked as the write ends,
    before anything is renamed), as a full disk or a file-size limit makes ``write`` fail."""
    real = os.chmod

    def chmod(path, mode, *args, **kwargs):
        if os.path.basename(str(path)).startswith(f".{name}.{TEMP_MARK}"):
            raise OSError(code, os.strerror(code))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "chmod", chmod)


def fail_lock_holder_line(monkeypatch) -> None:
    """The lock file's holder line cannot be written (the disk is full before the command writes anything)."""
    real = os.write

    def write(fd, data):
        if bytes(data[:7]) == b'{"pid":':
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(locks_module.os, "write", write)


def _files(root):
    return {p: (root / p).read_bytes() for p in listing(root) if (root / p).is_file()}


def _one_error_line(capsys, command, expected):
    err = capsys.readouterr().err.splitlines()
    assert err == [f"pe-probe {command}: error: {expected}"], err


def test_d01_a_full_disk_inside_torchs_writer_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """D01: ``train`` on a full disk, where torch's zip writer fails with its own RuntimeError ("unexpected
    pos"): one line ``No space left on device: RUN/state.pt``, and the fresh run leaves nothing half-written."""
    from pe_probe.training import checkpoints

    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 193856 vs 193744")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    monkeypatch.setattr(io_module, "_disk_full", lambda folder: True)
    out = tmp_path / "small" / "run"
    assert main(["train", "--out", str(out), *cli_args(**{"--epochs": "1"})]) == 2
    _one_error_line(capsys, "train", f"No space left on device: {out / 'state.pt'}")
    assert not out.exists() or [p for p in listing(out) if p.endswith(".tmp") or p == LOCK_FILE] == []


@pytest.mark.parametrize("case, code", [pytest.param("D02", errno.ENOSPC, id="D02"),
                                        pytest.param("FS05b", errno.EFBIG, id="FS05b")])
def test_d02_fs05b_eval_json_that_cannot_be_written_keeps_the_previous_one(case, code, digits_run, capsys,
                                                                          monkeypatch):
    """D02 (disk full, the lock's holder line too) and FS05b (a file-size limit over a large previous eval.json):
    one line naming eval.json, exit 2; the previous eval.json intact; no lock or temp file left in the run."""
    assert main(["eval", str(digits_run), "--split", "train"]) == 0
    if case == "FS05b":  # a previous record padded to many entries
        records = json.loads((digits_run / "eval.json").read_text())
        (digits_run / "eval.json").write_text(json.dumps(records * 50))
    before = _files(digits_run)
    capsys.readouterr()
    fail_writing(monkeypatch, "eval.json", code)
    if case == "D02":
        fail_lock_holder_line(monkeypatch)
    assert main(["eval", str(digits_run), "--device", "cpu", "--split", "train"]) == 2
    _one_error_line(capsys, "eval", f"{os.strerror(code)}: {digits_run / 'eval.json'}")
    assert _files(digits_run) == before  # eval.json as it was; no .pe-probe.lock, no temp


def test_d03_fs02_probe_reports_that_cannot_be_written_lose_nothing(digits_run, tmp_path, capsys, monkeypatch):
    """D03: ``probe --out NEW`` on a full disk: one line naming the file, no partial report, the neighbour report
    intact. FS02: ``probe`` over a previous report under a file-size limit: one line naming the file, the
    previous report intact."""
    argv = ["probe", str(digits_run), "--no-progress", "--device", "cpu", "--max-images", "16"]
    neighbour = tmp_path / "small" / "neighbour"
    assert main([*argv, "--out", str(neighbour)]) == 0
    before = _files(neighbour)
    capsys.readouterr()
    fail_writing(monkeypatch, "arrays.npz", errno.ENOSPC)
    new = tmp_path / "small" / "probe"
    assert main([*argv, "--out", str(new)]) == 2
    _one_error_line(capsys, "probe", f"No space left on device: {new / 'arrays.npz'}")
    assert not new.exists() or listing(new) == []
    fail_writing(monkeypatch, "arrays.npz", errno.EFBIG)
    assert main([*argv, "--out", str(neighbour), "--max-images", "32"]) == 2
    _one_error_line(capsys, "probe", f"File too large: {neighbour / 'arrays.npz'}")
    assert _files(neighbour) == before


def test_d05_a_full_disk_while_figures_caches_a_probe_leaves_the_runs_intact(digits_run, tmp_path, capsys,
                                                                              monkeypatch):
    """D05: ``figures`` whose first probe cache (RUN/probe) cannot be written: one line naming the file, exit 2,
    the runs as they were, no index."""
    runs = tmp_path / "small" / "runs"
    runs.mkdir(parents=True)
    shutil.move(digits_run, runs / "r1")
    before = _files(runs)
    fail_writing(monkeypatch, "arrays.npz", errno.ENOSPC)
    out = tmp_path / "figs"
    assert main(["figures", str(runs), "--out", str(out), "--no-progress", "--max-images", "16"]) == 2
    _one_error_line(capsys, "figures", f"No space left on device: {runs / 'r1' / 'probe' / 'arrays.npz'}")
    assert _files(runs) == before and [p for p in listing(runs) if p.endswith(".tmp") or LOCK_FILE in p] == []
    assert not (out / "index.md").exists()


def test_fs07_ablate_on_a_full_disk_keeps_the_previous_pair_and_leaves_no_lock(digits_run, tmp_path, capsys,
                                                                               monkeypatch):
    """FS07: ``ablate --out O`` over a previous pair on a full disk (the lock's holder line fails too): one line
    naming the file, the previous pair intact, no empty .pe-probe.lock left in O."""
    out = tmp_path / "small" / "o"
    argv = ["ablate", str(digits_run), "--out", str(out), "--no-progress", "--device", "cpu", "--max-images", "8"]
    assert main(argv) == 0
    before = _files(out)
    capsys.readouterr()
    fail_writing(monkeypatch, "ablation.csv", errno.ENOSPC)
    fail_lock_holder_line(monkeypatch)
    assert main(argv) == 2
    _one_error_line(capsys, "ablate", f"No space left on device: {out / 'ablation.csv'}")
    assert _files(out) == before and [p for p in listing(out) if p.startswith(".")] == []
