"""Every CLI failure is one line on stderr and exit code 2: argument errors, permission denied, disk full, an
unknown device, an unexpected error; a re-render cut short by the disk keeps the previous set with its index."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import pe_probe.core.io as io_module
from pe_probe.cli import error_line, main

from ..training.common import cli_args
from .common import listing

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize(
    "argv, command, match",
    [
        ([], "pe-probe", "the following arguments are required: COMMAND"),
        (["nope"], "pe-probe", "invalid choice: 'nope'"),
        (["train"], "pe-probe train", "the following arguments are required: --out"),
        (["train", "--out", "x", "--lr", "fast"], "pe-probe train", "argument --lr: invalid float value: 'fast'"),
        (["train", "--out", "x", "--bogus"], "pe-probe train", "unrecognized arguments: --bogus"),
        (["eval"], "pe-probe eval", "the following arguments are required: run"),
        (["probe", "ckpt", "--out", "x", "--adapter", "nope"], "pe-probe probe", "argument --adapter: invalid choice"),
        (["figures", "runs"], "pe-probe figures", "required: --out"),
        (["reproduce", "--out", "x", "--preset", "nope"], "pe-probe reproduce", "invalid choice: 'nope'"),
    ],
)
def test_argument_errors_are_one_line_with_a_pointer_to_help(argv, command, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ") and match in lines[0], captured.err
    assert lines[0].endswith(f"; see {command} --help") and not captured.out
    assert listing(tmp_path) == []


def _fail_on(monkeypatch, name: str, code: int) -> None:
    """Make the atomic rename of any file called ``name`` fail with ``code`` (as a full disk or a read-only
    folder would)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "replace", replace)


def test_permission_denied_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    _fail_on(monkeypatch, "config.json", errno.EACCES)
    assert main(["train", "--out", str(tmp_path / "run"), *cli_args()]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pe-probe train: error: Permission denied: {tmp_path / 'run' / 'config.json'}"
    assert listing(tmp_path) == []  # no temporary file, no half run


@pytest.mark.skipif(AS_ROOT, reason="root may write into a read-only folder")
def test_permission_denied_for_real(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        assert main(["train", "--out", str(tmp_path / "ro" / "run"), *cli_args()]) == 2
    finally:
        (tmp_path / "ro").chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Permission denied" in err, err
    assert listing(tmp_path) == ["ro"]


def test_disk_full_while_recording_an_evaluation_keeps_the_old_record(digits_run, capsys, monkeypatch):
    """D02 (the rename half): eval.json on a full disk: one line naming it, the previous record intact."""
    assert main(["eval", str(digits_run), "--split", "train"]) == 0
    before = (digits_run / "eval.json").read_text()
    capsys.readouterr()
    _fail_on(monkeypatch, "eval.json", errno.ENOSPC)
    assert main(["eval", str(digits_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pe-probe eval: error: No space left on device: {digits_run / 'eval.json'}"
    assert (digits_run / "eval.json").read_text() == before
    assert sorted(p.name for p in digits_run.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_disk_full_while_rerendering_keeps_the_previous_set_and_names_the_file(digits_run, tmp_path, capsys,
                                                                              monkeypatch):
    """FS06 / D04 from the CLI: one line naming the file in --out; the previous set, index included, intact."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.move(digits_run, runs / "run")
    out = tmp_path / "fig"
    argv = ["figures", str(runs), "--out", str(out), "--no-progress", "--max-images", "32"]
    assert main(argv) == 0  # a complete set first, with its index
    before = {p: (out / p).read_bytes() for p in listing(out)}
    assert {"index.md", "claims.csv", "table1.md"} <= set(before)
    capsys.readouterr()
    _fail_on(monkeypatch, "table1.md", errno.ENOSPC)  # the disk fills up while the second file is written
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pe-probe figures: error: No space left on device: {out / 'table1.md'}"
    assert {p: (out / p).read_bytes() for p in listing(out)} == before  # nothing lost, nothing mixed in
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder or lock file


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_unknown_device_is_one_line(command, digits_run, tmp_path, capsys):
    argv = ["eval", str(digits_run), "--device", "bogus"] if command == "eval" else \
        ["probe", str(digits_run), "--out", str(tmp_path / "report"), "--device", "bogus", "--no-progress"]
    before = listing(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"pe-probe {command}: error:") and "bogus" in err, err
    assert listing(tmp_path) == before


def test_an_unexpected_error_is_one_line_with_its_type(digits_run, capsys, monkeypatch):
    import pe_probe

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke\nwith a second line")

    monkeypatch.setattr(pe_probe, "evaluate", broken)
    assert main(["eval", str(digits_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("pe-probe eval: error: RuntimeError: something inside broke (an unexpected error; "
                   "PE_PROBE_DEBUG=1 prints its traceback)")
    monkeypatch.setenv("PE_PROBE_DEBUG", "1")
    assert main(["eval", str(digits_run)]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_data_loader_workers_error_is_reported_by_its_own_message():
    wrapped = RuntimeError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                           "last):\n  File \"x.py\", line 1, in f\npe_probe.core.errors.DataError: cannot read image "
                           "/d/a/1.jpg (it changed after the data set was checked?): broken data stream\n")
    assert error_line(wrapped) == ("cannot read image /d/a/1.jpg (it changed after the data set was checked?): "
                                   "broken data stream")
    assert error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) == \
        "No such file or directory: /x"
