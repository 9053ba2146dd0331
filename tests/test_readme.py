"""The README's Python API block runs as written: every name it uses is bound in the block, every ``pe_probe.X``
it calls exists, and executed top to bottom (in a temporary folder) each line does what its comment says. The
three calls that need what a test may not have or spend are stood in for: ``train`` trains the README's run
with a tiny model for one epoch, ``load_checkpoint`` of files the reader brings (a DeiT state dict, a hub
folder) only checks its arguments, and ``reproduce`` (the whole pipeline, tested in tests/pipeline) is recorded
only; the measuring calls see at most 32 images."""

from __future__ import annotations

import ast
import builtins
import re
import types
from pathlib import Path

import pytest

import pe_probe

README = Path(__file__).resolve().parents[1] / "README.md"
#: A 16-px digits model (the README's ``images`` are 1 x 16 x 16) with the 4 blocks its ``blocks.3`` names need.
MODEL = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)


def api_block() -> str:
    """The first python block after the README's "## Python API" heading."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_every_name_the_block_uses_is_bound_in_it():
    tree = ast.parse(api_block())
    bound = set(dir(builtins))
    unbound = []
    for stmt in tree.body:  # in order: a name must be bound by an earlier statement (or an import)
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                unbound.append((stmt.lineno, node.id))
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    assert unbound == [], unbound
    called = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
              and n.value.id == "pe_probe"}
    assert len(called) > 10 and all(hasattr(pe_probe, name) for name in called), called


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:hook_input_pe:RuntimeWarning")  # 4 steps on purpose: cheap
def test_the_api_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = {}

    def train(**kw):
        calls["train"] = kw
        return pe_probe.train(**kw, recipe="digits", model_kwargs=MODEL, epochs=1, batch_size=64,
                              progress=False, verbose=False, num_threads=1)

    def load_checkpoint(path, model=None, **kw):
        calls.setdefault("load_checkpoint", []).append((path, model))
        return None, None

    def capped(fn, **fixed):
        return lambda *a, **kw: fn(*a, **{"max_images": 32, "progress": False, **fixed, **kw})

    stand_in = types.SimpleNamespace(**{name: getattr(pe_probe, name) for name in pe_probe.__all__})
    stand_in.train, stand_in.load_checkpoint = train, load_checkpoint
    stand_in.probe, stand_in.ablate = capped(pe_probe.probe), capped(pe_probe.ablate)
    stand_in.attribute = capped(pe_probe.attribute, n_steps=4)
    stand_in.reproduce = lambda out, **kw: calls.setdefault("reproduce", out)
    code = "\n".join(line for line in api_block().splitlines() if not line.startswith("import "))
    ns = {"pe_probe": stand_in, "torch": pytest.importorskip("torch")}
    exec(compile(code, "<README.md: Python API>", "exec"), ns)  # noqa: S102 - the README's own code

    assert calls["train"] == {"out": "runs/mpvg", "pe_mode": "mpvg"} and (tmp_path / "runs/mpvg/config.json").is_file()
    cfg = ns["model"].pe_config  # MPVG: layer-wise, GAP, pos_0 in the Last LN
    assert (cfg.layerwise, cfg.global_pool, cfg.last_ln_pe) == (True, "avg", 0)
    assert set(ns["acts"]) == {"blocks.3.hook_tok", "blocks.3.hook_pe"} and ns["acts"]["blocks.3.hook_tok"].shape[0] == 8
    assert ns["report"].meta["n_images"] == 32
    tok_map, pe_map = ns["tok_map"], ns["pe_map"]
    assert tok_map.shape == pe_map.shape == (16, 32)  # 16 patch tokens (GAP: no class token) x 32 channels
    assert (tmp_path / "probes/mpvg/meta.json").is_file()
    assert [p for p, _ in calls["load_checkpoint"]] == ["deit.safetensors", "hf/dinov2-small"]
    assert calls["reproduce"] == "out/quick"
