"""Checkpoints that lie: a 1 MB zip declaring 64 MB of (compressed) storage is refused from the zip's directory
before anything is inflated; weights of another dtype are refused; a pickle with code is one error line, with no
torch warning before it (cases CK04, W06, CK07, M06)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from pe_probe.cli import main

from .common import env

#: 64 MiB of float32 zeros (a 60 KB file once deflated).
BOMB_NUMEL = 16 * 2**20


def _bomb(path):
    plain = path.with_name("plain.pth")
    torch.save({"w": torch.zeros(BOMB_NUMEL)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as fin, dst.open(info.filename, "w", force_zip64=True) as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
    plain.unlink()
    return path


PEAK = """
import resource, sys
from pe_probe.cli import main
rc = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, rc)
"""


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path):
    """CK04: a zip whose storage inflates far beyond its size is one line, refused before it is inflated."""
    bomb = _bomb(tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 2**20
    argv = ["probe", str(bomb), "--model", "pe_deit_tiny_patch16_224", "--data", "digits", "--out",
            str(tmp_path / "o"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", PEAK, *argv], env=env(), capture_output=True, text=True, timeout=300)
    peak_mb, rc = map(int, proc.stdout.split()[-2:])
    assert rc == 2 and len(proc.stderr.splitlines()) == 1 and "zip bomb" in proc.stderr, proc.stderr
    assert str(bomb) in proc.stderr
    assert peak_mb < 1500, peak_mb  # python + torch + timm, without the 64 MB storage (and far from the 2.7 GB)
    assert not (tmp_path / "o").exists()


def test_weights_of_another_dtype_are_refused(digits_run, capsys):
    """W06: int64 weights for float parameters: one line naming the file and the dtype."""
    from safetensors.torch import load_file, save_file

    weights = digits_run / "model.safetensors"
    save_file({k: v.to(torch.int64) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()},
              str(weights))
    assert main(["eval", str(digits_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "int64" in err[0] and "model.safetensors" in err[0], err
    assert not (digits_run / "eval.json").exists()


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_with_code_is_one_line_without_torch_warnings(tmp_path, capsys):
    """CK07: ``probe evil.pt`` (a raw protocol-4 pickle that would run code): one line, the code never runs."""
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Payload()}, protocol=4))
    assert main(["probe", str(evil), "--model", "pe_deit_tiny_patch16_224", "--data", "digits", "--out",
                 str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "evil.pt" in captured.err, captured.err
    assert "code ran" not in captured.out


# ---------------------------------------------------------------------------------------------- M06 / CK07
def _no_protocol_warning():
    """A context recording every warning; ``.caught`` lists torch's pickle-protocol ones on exit."""
    rec = warnings.catch_warnings(record=True)

    class _Ctx:
        def __enter__(self):
            self.all = rec.__enter__()
            warnings.simplefilter("always")
            return self

        def __exit__(self, *exc):
            rec.__exit__(*exc)
            self.caught = [str(w.message) for w in self.all if "pickle protocol" in str(w.message)]
            return False

    return _Ctx()


def _loads_or_names_the_protocol(load, path):
    """torch (2.14) reads no framed pickle (protocol >= 4) with weights_only; a newer one may: either it loads,
    or the one-line refusal says why (not "corrupt", not "needs pickled objects")."""
    from pe_probe.core.errors import CheckpointError

    try:
        return load()
    except CheckpointError as exc:
        assert str(exc).startswith(f"{path} is a pickle of protocol 4") and "nothing of it was loaded" in str(exc)
        return None


def test_m06_ck07_protocol_4_pickles_load_or_refuse_without_torchs_protocol_warning(digits_run, tmp_path):
    """torch warns "Detected pickle protocol 4 in the checkpoint" on every weights_only load of a protocol-4
    pickle, loaded or refused; pe-probe's loaders (state.pt, .pth files) silence exactly that warning."""
    from safetensors.torch import load_file

    from pe_probe.core.errors import CheckpointError
    from pe_probe.core.rundir import RunDir
    from pe_probe.training.checkpoints import load_state
    from pe_probe.training.formats import load_checkpoint

    from ..training.common import TINY_MODEL

    run = RunDir(digits_run)
    torch.save(torch.load(run.state_path, weights_only=True), run.state_path, pickle_protocol=4)
    pth = tmp_path / "weights.pth"
    torch.save(load_file(str(digits_run / "model.safetensors")), pth, pickle_protocol=4)
    with _no_protocol_warning() as ctx:
        _loads_or_names_the_protocol(lambda: load_state(run), run.state_path)
        _loads_or_names_the_protocol(lambda: load_checkpoint(pth, "pe_deit_tiny_patch16_224", **TINY_MODEL), pth)
    assert ctx.caught == []
    evil = tmp_path / "evil.pt"  # CK07: a raw protocol-4 pickle that would run code
    evil.write_bytes(pickle.dumps({"w": _Payload()}, protocol=4))
    torch.save({"format": 1, "x": _Payload()}, run.state_path, pickle_protocol=4)  # M06: a resume state with code
    with _no_protocol_warning() as ctx:
        with pytest.raises(CheckpointError, match="evil.pt"):
            load_checkpoint(evil, "pe_deit_tiny_patch16_224", **TINY_MODEL)
        with pytest.raises(CheckpointError, match="state.pt"):
            load_state(run)
    assert ctx.caught == []
    # torch itself does warn, outside pe-probe's loaders (so the filter above is what keeps them quiet)
    with pytest.warns(UserWarning, match="Detected pickle protocol 4"), pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


@pytest.mark.parametrize("payload", [True, False])
def test_m06_train_resume_over_a_protocol_4_state_is_one_line(payload, digits_run, capsys):
    """M06: ``train --resume`` over a protocol-4 state.pt (with code, or sound): one line naming state.pt, exit 2,
    no code run; or, where torch reads the sound one, a resume without a warning line."""
    (digits_run / "summary.json").unlink()
    state = digits_run / "state.pt"
    torch.save({"format": 1, "x": _Payload()} if payload else torch.load(state, weights_only=True), state,
               pickle_protocol=4)
    rc = main(["train", "--out", str(digits_run), "--resume", "--no-progress", "--quiet"])
    captured = capsys.readouterr()
    assert "code ran" not in captured.out
    if rc == 0 and not payload:
        assert captured.err == "" and (digits_run / "summary.json").is_file()
        return
    assert rc == 2 and len(captured.err.splitlines()) == 1 and "state.pt" in captured.err, captured.err
    assert "warning" not in captured.err
