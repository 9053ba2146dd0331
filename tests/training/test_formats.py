"""``pe_probe.load_checkpoint`` on every checkpoint format researchers hold, built here from random models.

Where the weights are the same the logits must be bit-identical to the source model's; LaPE checkpoints are
checked against LaPE's equations written out on the checkpoint's own tensors. Nothing is downloaded; no
pickle beyond tensors and ``argparse.Namespace`` is ever run.
"""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import pe_probe
from pe_probe import CheckpointError, UnknownNameError
from pe_probe.training.formats import PELayout

from ..probing.reference import randomize_norms

#: A tiny pe_* model (16 px, 4x4 patches -> 4x4 grid, 3 blocks of 32 dims); registered name + kwargs.
PE_NAME = "pe_vit_lite_7_4_32"
PE_ARCH = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)
#: timm's DeiT-Ti made tiny the same way.
TIMM_NAME = "deit_tiny_patch16_224"
TIMM_ARCH = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter random (PE, class token, LayerNorm affines included), so any mix-up shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (scale if p.ndim < 2 or p.shape[-1] < 64 else 0.05))
    randomize_norms(model, seed)
    return model.eval()


def pe_model(mode: str = "mpvg", seed: int = 0, **kw) -> torch.nn.Module:
    return randomize(timm.create_model(PE_NAME, pe_mode=mode, num_classes=5, **{**PE_ARCH, **kw}), seed)


def timm_model(seed: int = 0) -> torch.nn.Module:
    return randomize(timm.create_model(TIMM_NAME, num_classes=5, **TIMM_ARCH), seed)


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


X16 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def sd_of(model, prefix: str = "") -> dict:
    return {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("mode", ["default", "lape", "pvg", "mpvg"])
@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin", "pt-train", "pth.tar-timm", "hub-safetensors",
                                 "hub-bin"])
def test_every_format_gives_the_source_logits_bit_exactly(tmp_path, fmt, mode):
    src = pe_model(mode)
    sd = sd_of(src)
    kwargs: dict = {}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
        model_name, kwargs = PE_NAME, dict(PE_ARCH)
    elif fmt in ("pth", "bin"):
        path = tmp_path / f"w.{fmt}"
        torch.save(sd, path)
        model_name, kwargs = PE_NAME, dict(PE_ARCH)
    elif fmt == "pt-train":  # a DDP training checkpoint: module. prefixes, optimizer state, args naming the model
        path = tmp_path / "ckpt.pt"
        opt = torch.optim.AdamW(src.parameters())
        torch.save({"model": sd_of(src, "module."), "optimizer": opt.state_dict(), "epoch": 3,
                    "args": argparse.Namespace(model=PE_NAME, input_size=16, lr=1e-3)}, path)
        model_name, kwargs = None, {k: v for k, v in PE_ARCH.items() if k != "img_size"}
    elif fmt == "pth.tar-timm":  # timm train.py: state_dict + state_dict_ema + arch
        path = tmp_path / "checkpoint-3.pth.tar"
        torch.save({"epoch": 3, "arch": PE_NAME, "state_dict": sd, "state_dict_ema": sd_of(pe_model(mode, seed=9)),
                    "args": argparse.Namespace(model=PE_NAME, img_size=None, input_size=None)}, path)
        model_name, kwargs = None, dict(PE_ARCH)
    else:  # timm's hub folder, as save_for_hf writes it
        pytest.importorskip("huggingface_hub")
        from timm.models._hub import save_for_hf

        path = tmp_path / "hub"
        save_for_hf(src, str(path), safe_serialization=fmt == "hub-safetensors")
        assert (path / ("model.safetensors" if fmt == "hub-safetensors" else "pytorch_model.bin")).is_file()
        model_name = None
    model, info = pe_probe.load_checkpoint(path, model_name, **kwargs)
    assert torch.equal(logits(model, X16), logits(src, X16))
    assert model.pe_mode == mode and model.pe_config == src.pe_config and not model.training
    assert info.model == PE_NAME and info.scheme["pe_mode"] == mode
    expected_key = {"pt-train": "model", "pth.tar-timm": "state_dict"}.get(fmt)
    assert info.weights_key == expected_key
    if fmt.startswith("hub"):
        assert info.format == "hub" and "config.json" in info.scheme_source and info.data["in_chans"] == 3
    else:
        assert "inferred from the state-dict keys" in info.scheme_source


def test_timm_vit_state_dict_and_hub_folder(tmp_path):
    src = timm_model()
    save_file(sd_of(src), str(tmp_path / "deit.safetensors"))
    model, info = pe_probe.load_checkpoint(tmp_path / "deit.safetensors", TIMM_NAME, **TIMM_ARCH)
    assert torch.equal(logits(model, X16), logits(src, X16))
    assert info.scheme is None and info.format == "safetensors" and info.weights_key is None
    pytest.importorskip("huggingface_hub")
    from timm.models._hub import save_for_hf

    save_for_hf(src, str(tmp_path / "hub"), safe_serialization=True)
    model, info = pe_probe.load_checkpoint(tmp_path / "hub")
    assert torch.equal(logits(model, X16), logits(src, X16))
    assert info.model == TIMM_NAME and info.model_source.startswith("the folder's config.json")


def test_run_directory(tmp_path):
    from pe_probe.training.checkpoints import save_weights

    src = pe_model("pvg")
    rd = pe_probe.RunDir(tmp_path / "run")
    rd.path.mkdir()
    kw = {"pe_mode": "pvg", "num_classes": 5, **PE_ARCH}
    rd.write_config({"model": PE_NAME, "model_kwargs": kw, "num_classes": 5,
                     "data": {"dataset": "digits", "img_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}})
    save_weights(rd, src)
    model, info = pe_probe.load_checkpoint(rd.path)
    assert torch.equal(logits(model, X16), logits(src, X16))
    assert info.format == "run" and info.data["dataset"] == "digits" and info.scheme_source == "the run's config.json"
    assert info.data["signature"] == {"size": [8, 8], "channels": 1, "num_classes": 5}  # digits' own images
    with pytest.raises(CheckpointError, match="no EMA"):
        pe_probe.load_checkpoint(rd.path, use_ema=True)


def test_ema_weights_only_when_asked(tmp_path):
    trained, ema = pe_model("mpvg", seed=1), pe_model("mpvg", seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd_of(trained), "model_ema": sd_of(ema), "epoch": 1,
                "args": argparse.Namespace(model=PE_NAME, input_size=16)}, path)
    kw = {k: v for k, v in PE_ARCH.items() if k != "img_size"}
    model, info = pe_probe.load_checkpoint(path, **kw)
    assert info.weights_key == "model" and torch.equal(logits(model, X16), logits(trained, X16))
    model, info = pe_probe.load_checkpoint(path, use_ema=True, **kw)
    assert info.weights_key == "model_ema" and torch.equal(logits(model, X16), logits(ema, X16))
    # timm's own loader would have picked the EMA weights by default: the reason use_ema is explicit
    assert torch.equal(timm.models.load_state_dict(str(path))["head.bias"], ema.state_dict()["head.bias"])
    torch.save(sd_of(trained), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        pe_probe.load_checkpoint(tmp_path / "bare.pth", PE_NAME, use_ema=True, **PE_ARCH)


# ---------------------------------------------------------------------------------------------- LaPE
def lape_forward(sd: dict, x: torch.Tensor, heads: int, eps: float = 1e-6, hierarchical: bool = True) -> torch.Tensor:
    """LaPE's DeiT (Yu et al. 2023, Fig. 2 / Eq. 5-6) written out on a checkpoint's tensors: no PE on the
    input; block l adds ``pe_l = LN'_l(pe_{l-1})`` (``pe_{-1}`` = pos_embed) to ``LN_l(x)`` before attention;
    final LayerNorm on every token, class token to the head."""
    D = sd["cls_token"].shape[-1]

    def ln(t, name):
        return F.layer_norm(t, (D,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    w = sd["patch_embed.proj.weight"]
    p = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    h = torch.cat([sd["cls_token"].expand(len(x), -1, -1), p], 1)
    pe = sd["pos_embed"].reshape(1, -1, D)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for l in range(depth):
        b = f"blocks.{l}"
        pe = ln(pe if hierarchical else sd["pos_embed"].reshape(1, -1, D), f"{b}.pe_norm")
        a = ln(h, f"{b}.norm1") + pe
        B, N, _ = a.shape
        qkv = F.linear(a, sd[f"{b}.attn.qkv.weight"], sd[f"{b}.attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (D // heads) ** -0.5).softmax(-1)
        h = h + F.linear((att @ v).transpose(1, 2).reshape(B, N, D), sd[f"{b}.attn.proj.weight"],
                         sd[f"{b}.attn.proj.bias"])
        z = F.gelu(F.linear(ln(h, f"{b}.norm2"), sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"]))
        h = h + F.linear(z, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"])
    return F.linear(ln(h, "norm")[:, 0], sd["head.weight"], sd["head.bias"])


def lape_state_dict(join_type: str = "LaPE", seed: int = 3) -> dict:
    """Random DeiT-Ti weights (192 dims, 12 blocks, 3 heads) at 32 px, in LaPE's key order (pe_norm first)."""
    m = randomize(timm.create_model("pe_deit_tiny_patch16_224", pe_mode="lape" if join_type == "LaPE" else "default",
                                    img_size=32, num_classes=10), seed)
    sd = sd_of(m)
    order = sorted(sd, key=lambda k: (k.split(".")[:2], "pe_norm" not in k))
    return {k: sd[k] for k in order}


def save_lape(path, sd: dict, **args) -> None:
    """A checkpoint as LaPE's main.py saves it (model, model_ema, optimizer, scheduler, epoch, scaler, args)."""
    ns = dict(model="deit_tiny_patch16_224", join_type="LaPE", pe="learnable", input_size=32, nb_classes=10,
              data_set="CIFAR", model_ema=True)
    ns.update(args)
    torch.save({"model": sd, "model_ema": {k: v + 0.01 for k, v in sd.items()}, "optimizer": {"state": {}},
                "lr_scheduler": {"last_epoch": 3}, "epoch": 299, "scaler": {"scale": 1024.0},
                "args": argparse.Namespace(**ns)}, path)


X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_lape_checkpoint_loads_with_no_flags_and_gives_lapes_logits(tmp_path):
    sd = lape_state_dict()
    save_lape(tmp_path / "best_checkpoint.pth", sd)
    model, info = pe_probe.load_checkpoint(tmp_path / "best_checkpoint.pth")
    assert info.model == "pe_deit_tiny_patch16_224" and model.pe_mode == "lape" and info.weights_key == "model"
    assert "join_type='LaPE'" in info.scheme_source and info.data["crop_pct"] == 1.0
    ref = lape_forward(sd, X32, heads=3)
    got = logits(model, X32)
    assert (got - ref).abs().max().item() < 1e-5 and ref.abs().max() > 0.5
    # the same tensors through a non-hierarchical chain give other logits: the comparison can fail
    assert (lape_forward(sd, X32, heads=3, hierarchical=False) - got).abs().max() > 1e-3


def test_lape_variants(tmp_path):
    sd = lape_state_dict()
    one_d = dict(sd, pos_embed=sd["pos_embed"][0].clone())  # pe=1D_sin stores an (N+1, D) table
    save_lape(tmp_path / "sin1d.pth", one_d, pe="1D_sin")
    model, _ = pe_probe.load_checkpoint(tmp_path / "sin1d.pth")
    assert (logits(model, X32) - lape_forward(sd, X32, heads=3)).abs().max().item() < 1e-5
    basic = lape_state_dict("basic")
    save_lape(tmp_path / "basic.pth", basic, join_type="basic")
    model, info = pe_probe.load_checkpoint(tmp_path / "basic.pth")
    ref = timm.create_model("deit_tiny_patch16_224", img_size=32, num_classes=10).eval()
    ref.load_state_dict(basic)
    assert model.pe_mode == "default" and torch.equal(logits(model, X32), logits(ref, X32))


@pytest.mark.parametrize("args, match", [
    (dict(join_type="share"), "join_type='share'"),
    (dict(pe="2D_RPE"), "pe='2D_RPE'"),
    (dict(model="deit_tiny_distilled_patch16_224"), "distilled"),
    (dict(model="deit_base_patch16_384"), "no pe-probe counterpart"),
])
def test_unsupported_lape_variants_are_refused(tmp_path, args, match):
    save_lape(tmp_path / "c.pth", lape_state_dict(), **args)
    with pytest.raises(CheckpointError, match=match):
        pe_probe.load_checkpoint(tmp_path / "c.pth")


def test_layerwise_keys_loaded_as_another_scheme_say_which_fits(tmp_path):
    save_lape(tmp_path / "c.pth", lape_state_dict())
    with pytest.raises(CheckpointError, match=r"pe_norm in blocks 0-11 of 12.*pe_mode='default'.*"
                                              r"pe_mode='lape', global_pool='token' fits"):
        pe_probe.load_checkpoint(tmp_path / "c.pth", pe_mode="default")
    with pytest.raises(CheckpointError, match=r"deit_tiny_patch16_224 \(timm\) has no pe_norm.*"
                                              r"load it as pe_deit_tiny_patch16_224 with pe_mode='lape'"):
        pe_probe.load_checkpoint(tmp_path / "c.pth", "deit_tiny_patch16_224")
    save_file(sd_of(pe_model("mpvg")), str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=r"pe_norm in blocks 1-2 of 3, a last_pe_norm, no cls_token.*"
                                              r"pe_mode='mpvg', global_pool='avg' fits"):
        pe_probe.load_checkpoint(tmp_path / "m.safetensors", PE_NAME, pe_mode="lape", global_pool="avg", **PE_ARCH)


@pytest.mark.parametrize("mode, kw", [("default", {}), ("default", {"global_pool": "avg", "last_ln_pe": 0}),
                                      ("lape", {}), ("pvg", {"global_pool": "token"}), ("mpvg", {}),
                                      ("mpvg", {"pe_layer0": True})])
def test_key_layout_inference_rebuilds_the_scheme(mode, kw):
    src = timm.create_model(PE_NAME, pe_mode=mode, **PE_ARCH, **kw)
    fit = PELayout.of(src.state_dict()).fitting_kwargs()
    rebuilt = timm.create_model(PE_NAME, **PE_ARCH, **fit)
    assert rebuilt.pe_config == src.pe_config


# ---------------------------------------------------------------------------------------------- sizes, names
def test_other_image_size_is_an_error_unless_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    src = pe_model("lape", global_pool="token")
    save_file(sd_of(src), str(tmp_path / "w.safetensors"))
    small = {**PE_ARCH, "img_size": 8}
    with pytest.raises(CheckpointError, match=r"4x4 patch grid \(16x16 px.*2x2 grid \(8x8 px.*img_size=16.*"
                                              r"--resample-pos-embed"):
        pe_probe.load_checkpoint(tmp_path / "w.safetensors", PE_NAME, **small)
    model, info = pe_probe.load_checkpoint(tmp_path / "w.safetensors", PE_NAME, resample_pos_embed=True, **small)
    assert info.pos_embed_resampled["from"] == [4, 4] and info.pos_embed_resampled["to"] == [2, 2]
    pos = src.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 2), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 4, -1)
    assert torch.allclose(model.pos_embed[:, 1:], expected, atol=1e-6)
    assert torch.equal(model.pos_embed[:, :1], pos[:, :1])  # the class-token row is kept
    assert torch.equal(model.pos_embed, resample_abs_pos_embed(pos, [2, 2], num_prefix_tokens=1))
    assert logits(model, torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_no_model_name_asks_for_model(tmp_path):
    save_file(sd_of(timm_model()), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="--model NAME"):
        pe_probe.load_checkpoint(tmp_path / "w.safetensors")
    torch.save({"model": sd_of(timm_model()), "args": argparse.Namespace(model="no_such_net")}, tmp_path / "c.pth")
    with pytest.raises(UnknownNameError, match=r"'no_such_net' \(from the checkpoint's args.model\); pass --model"):
        pe_probe.load_checkpoint(tmp_path / "c.pth")


class Evil:
    """Unpickling this would write ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    payload = {"model": sd_of(timm_model()), "args": Evil(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": Evil(str(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match="never unpickles code|corrupt"):
        pe_probe.load_checkpoint(path, TIMM_NAME, **TIMM_ARCH)
    assert not marker.exists()
    if how == "torch.save":  # the message names the global that was refused
        with pytest.raises(CheckpointError, match=r"system.*nothing was loaded"):
            pe_probe.load_checkpoint(path, TIMM_NAME, **TIMM_ARCH)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- hints
def test_another_patch_size_names_patch_size_not_img_size(tmp_path):
    # 16 px in 4x4 patches (a 4x4 grid); DeiT's default build has 16x16 patches at 224 px
    save_file(sd_of(timm_model()), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"trained with 4x4 patches.*the model has 16x16.*"
                                              r"--model-arg patch_size=4 --model-arg img_size=16\)") as exc:
        pe_probe.load_checkpoint(tmp_path / "w.safetensors", TIMM_NAME, num_classes=5, depth=2, embed_dim=32,
                                 num_heads=2)
    assert "\n" not in str(exc.value)
    # the hint's knobs are the fix (img_size alone, the old hint, would not be)
    model, _ = pe_probe.load_checkpoint(tmp_path / "w.safetensors", TIMM_NAME, **{**TIMM_ARCH, "num_classes": 5})
    assert torch.equal(logits(model, X16), logits(timm_model(), X16))
    with pytest.raises(CheckpointError, match="patch_size=4"):
        pe_probe.load_checkpoint(tmp_path / "w.safetensors", TIMM_NAME, img_size=64, num_classes=5, depth=2,
                                 embed_dim=32, num_heads=2)


def test_an_ema_only_checkpoint_names_ema(tmp_path):
    torch.save({"model_ema": sd_of(timm_model()), "epoch": 3}, tmp_path / "ema.pth")
    with pytest.raises(CheckpointError, match=r"holds only EMA weights \(model_ema\).*--ema") as exc:
        pe_probe.load_checkpoint(tmp_path / "ema.pth", TIMM_NAME, **TIMM_ARCH)
    assert "expected a state dict" not in str(exc.value)  # no contradiction: the weights are there, as EMA
    model, info = pe_probe.load_checkpoint(tmp_path / "ema.pth", TIMM_NAME, use_ema=True, **TIMM_ARCH,
                                           num_classes=5)
    assert info.weights_key == "model_ema" and torch.equal(logits(model, X16), logits(timm_model(), X16))


def test_timm_train_py_checkpoint_honours_its_model_kwargs_and_mean(tmp_path):
    # timm's train.py saves {"arch", "state_dict", "args"}; args hold --model-kwargs as a dict, --mean/--std
    src = timm_model()
    args = argparse.Namespace(model=TIMM_NAME, input_size=None, img_size=16, num_classes=5, mean=[0.1, 0.2, 0.3],
                              std=[0.5, 0.5, 0.5], model_kwargs={"patch_size": 4, "embed_dim": 32, "depth": 2,
                                                                 "num_heads": 2})
    torch.save({"arch": TIMM_NAME, "state_dict": sd_of(src), "epoch": 9, "args": args}, tmp_path / "last.pth.tar")
    model, info = pe_probe.load_checkpoint(tmp_path / "last.pth.tar")  # no --model, no --model-arg
    assert torch.equal(logits(model, X16), logits(src, X16)) and len(model.blocks) == 2
    assert info.data["mean"] == [0.1, 0.2, 0.3] and info.data["std"] == [0.5, 0.5, 0.5]
