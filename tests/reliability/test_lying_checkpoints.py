"""Checkpoints that lie: a 1 MB zip declaring 64 MB of (compressed) storage is refused from the zip's directory
before anything is inflated; weights of another dtype are refused; a pickle with code is one error line, with no
torch warning before it (cases CK04, W06, CK07, M06)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile

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
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Payload()}, protocol=4))
    assert main(["probe", str(evil), "--model", "pe_deit_tiny_patch16_224", "--data", "digits", "--out",
                 str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "evil.pt" in captured.err, captured.err
    assert "code ran" not in captured.out
