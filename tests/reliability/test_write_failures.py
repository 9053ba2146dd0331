"""Only files pe-probe created are removed (its temps are ``.NAME.pe-probe-XXXXXXXX.tmp``), and a write that fails
for lack of space or a file-size limit, also inside torch or safetensors, is one line naming the file (cases
PT10, D01-D05, FS01-FS04, FS05b, FS07)."""

from __future__ import annotations

import errno
import resource
import subprocess

import pytest

from pe_probe.cli import main
from pe_probe.core import io
from pe_probe.core.io import atomic_path
from pe_probe.core.locks import LOCK_FILE

from ..training.common import cli_args
from .common import env, listing, pe_probe_cmd


def test_a_users_hidden_tmp_file_survives_and_only_pe_probe_temps_go(digits_run, tmp_path, capsys):
    """PT10: a user's ``.my.notes.tmp`` in --out survives; only pe-probe's own temps are swept."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".my.notes.tmp").write_text("mine")
    (out / ".report.tmp").write_text("mine too")
    stale = out / ".meta.json.pe-probe-abcd1234.tmp"  # what a killed pe-probe write leaves
    stale.write_text("half")
    assert main(["probe", str(digits_run), "--out", str(out), "--max-images", "16", "--no-progress"]) == 0
    assert (out / ".my.notes.tmp").read_text() == "mine" and (out / ".report.tmp").read_text() == "mine too"
    assert not stale.exists()


def test_a_write_error_without_a_file_name_names_the_destination(tmp_path):
    with pytest.raises(OSError) as err, atomic_path(tmp_path / "eval.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "eval.json")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("message, full, code", [
    ("[enforce fail at inline_container.cc:672] . unexpected pos 193856 vs 193744", True, errno.ENOSPC),
    ("Error while serializing: I/O error: File too large (os error 27)", False, errno.EFBIG),
    ("Error while serializing: I/O error: No space left on device (os error 28)", False, errno.ENOSPC),
])
def test_torch_and_safetensors_write_errors_become_the_errno_naming_the_file(message, full, code, tmp_path,
                                                                             monkeypatch):
    """D01 / FS01: the errors torch's zip writer and safetensors raise on a full disk or a size limit become the
    errno naming the destination."""
    monkeypatch.setattr(io, "_disk_full", lambda folder: full)
    with pytest.raises(OSError) as err, atomic_path(tmp_path / "state.pt"):
        raise RuntimeError(message)
    assert err.value.errno == code and err.value.filename == str(tmp_path / "state.pt")


def _limited(nbytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


@pytest.mark.slow
def test_a_file_size_limit_in_training_is_one_line_naming_the_file_and_the_rerun_works(tmp_path):
    """FS01: ``ulimit -f`` in train: one line ``File too large: RUN/model.safetensors``, no temps; the rerun works."""
    out = tmp_path / "run"
    argv = pe_probe_cmd("train", "--out", out, *cli_args(**{"--epochs": "1"}))
    proc = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=300, preexec_fn=_limited(40_000))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"pe-probe train: error: File too large: {out / 'model.safetensors'}"]
    assert not out.exists() or [p for p in listing(out) if p.endswith(".tmp") or p == LOCK_FILE] == []
    again = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_a_file_size_limit_in_ablate_names_the_file_and_keeps_the_previous_pair(digits_run, tmp_path, capsys):
    """FS03: a real file-size limit in ablate over a previous pair: one line naming the file, the pair intact."""
    out = tmp_path / "o"
    assert main(["ablate", str(digits_run), "--out", str(out), "--max-images", "8", "--no-progress"]) == 0
    before = {p: (out / p).read_bytes() for p in listing(out)}
    proc = subprocess.run(pe_probe_cmd("ablate", digits_run, "--out", out, "--max-images", "16", "--no-progress"),
                          env=env(), capture_output=True, text=True, timeout=300, preexec_fn=_limited(200))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "File too large: " in proc.stderr and "ablation." in proc.stderr
    assert {p: (out / p).read_bytes() for p in listing(out)} == before


@pytest.mark.slow
def test_a_zero_file_size_limit_in_eval_names_eval_json_and_keeps_the_previous_one(digits_run, capsys):
    """FS05: ``ulimit -f 0`` in eval: one line naming eval.json, the previous one intact."""
    # FS05: under `ulimit -f 0` torch's import used to fail first ("No usable temporary directory"); and the
    # training-split warning must not print before the error line
    assert main(["eval", str(digits_run), "--device", "cpu", "--split", "train"]) == 0
    before = (digits_run / "eval.json").read_bytes()
    proc = subprocess.run(pe_probe_cmd("eval", digits_run, "--device", "cpu", "--split", "train"), env=env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=_limited(0))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"pe-probe eval: error: File too large: {digits_run / 'eval.json'}"]
    assert (digits_run / "eval.json").read_bytes() == before


@pytest.mark.slow
def test_a_file_size_limit_in_attribute_prints_no_warning_before_its_error(digits_run, tmp_path, capsys):
    """FS04: ``ulimit -f 4`` in attribute over a previous pair: one line (no warning before it), the pair intact."""
    # FS04: n_steps=2 makes the attributions incomplete (a RuntimeWarning), which must not precede the error
    out = tmp_path / "o"
    argv = ["attribute", str(digits_run), "--out", str(out), "--max-images", "4", "--n-steps", "2", "--no-progress",
            "--device", "cpu"]
    assert main(argv) == 0
    assert "warning: hook_input_pe" in capsys.readouterr().err  # the warning, after the result
    before = {p: (out / p).read_bytes() for p in listing(out)}
    proc = subprocess.run(pe_probe_cmd(*argv), env=env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(1024))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "File too large: " in proc.stderr and "attribution." in proc.stderr
    assert {p: (out / p).read_bytes() for p in listing(out)} == before
