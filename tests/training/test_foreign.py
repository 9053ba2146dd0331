"""Checkpoints and model objects of other libraries load as timm models with no flags: torchvision
``VisionTransformer``, Hugging Face transformers ViT / DeiT / DINOv2 folders, open_clip / OpenAI CLIP towers.

Every source model is built here from a config with random weights (nothing is downloaded) and is the
independent computation: the timm model must give its logits (or features) on the same images to 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

import pe_probe
from pe_probe import CheckpointError, RunDir
from pe_probe.models import foreign

from ..probing.reference import randomize_norms
from ..probing.test_cli import fake_data  # noqa: F401 - the fixture: a stand-in data set "toy"

X16 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
TOL = 1e-5


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter random (PE, class/register tokens, layer scales, LayerNorm affines), so a weight that
    lands in the wrong place, or a missing one, shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * scale)
    randomize_norms(model, seed)
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) < TOL


def sd_of(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- torchvision
def tv_vit(seed: int = 0, **kw) -> torch.nn.Module:
    args = dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256, num_classes=5)
    return randomize(torchvision.models.VisionTransformer(**{**args, **kw}), seed)


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_torchvision_state_dict_loads_with_no_flags(tmp_path, suffix):
    src = tv_vit()
    path = tmp_path / f"vit.{suffix}"
    save_file(sd_of(src), str(path)) if suffix == "safetensors" else torch.save(src.state_dict(), path)
    model, info = pe_probe.load_checkpoint(path)
    with torch.no_grad():
        assert close(model(X16), src(X16))
    assert isinstance(model, timm.models.VisionTransformer) and not model.training
    assert info.model_source.startswith("torchvision VisionTransformer") and info.scheme is None
    assert info.model_kwargs["num_heads"] == 2 and info.model_kwargs["img_size"] == 16
    assert info.data["mean"] == [0.485, 0.456, 0.406] and info.data["img_size"] == 16


def test_torchvision_pre_013_mlp_names_load(tmp_path):
    src = tv_vit()
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd_of(src).items()}
    torch.save(old, tmp_path / "old.pth")
    model, _ = pe_probe.load_checkpoint(tmp_path / "old.pth")
    with torch.no_grad():
        assert close(model(X16), src(X16))


def test_torchvision_head_count_is_width_over_64_unless_given(tmp_path):
    src = tv_vit(num_heads=4)  # head width 32: the state dict cannot show it
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    wrong, _ = pe_probe.load_checkpoint(tmp_path / "vit.pth")
    right, info = pe_probe.load_checkpoint(tmp_path / "vit.pth", num_heads=4)
    with torch.no_grad():
        assert not close(wrong(X16), src(X16)) and close(right(X16), src(X16))
    assert info.model_kwargs["num_heads"] == 4


def sd_heads(arch: str) -> int:
    """torchvision's own head count for ``arch`` (its builder's keyword, read from the model it builds)."""
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None).encoder.layers[0].self_attention.num_heads


@pytest.mark.parametrize("arch, timm_name", [
    ("vit_b_16", "vit_base_patch16_224"), ("vit_b_32", "vit_base_patch32_224"), ("vit_l_16", "vit_large_patch16_224"),
    ("vit_l_32", "vit_large_patch32_224"), ("vit_h_14", "vit_huge_patch14_224")])
def test_torchvision_standard_models_map_to_timms_names(arch, timm_name):
    with torch.device("meta"):  # shapes only: a ViT-H costs nothing here
        sd = getattr(torchvision.models, arch)(weights=None).state_dict()
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000).state_dict()
    f = foreign.from_torchvision(sd)
    assert f.model == timm_name and f.kwargs["num_heads"] == sd_heads(arch)
    assert {k: tuple(v.shape) for k, v in f.state_dict.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


# ---------------------------------------------------------------------------------------------- Hugging Face
transformers = pytest.importorskip("transformers")

HF_ARCH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4)
HF_CASES = {  # name: (model class, config class, config extras, output compared)
    "vit-classifier": ("ViTForImageClassification", "ViTConfig", dict(intermediate_size=64, num_labels=5), "logits"),
    "vit-eps-1e-3": ("ViTForImageClassification", "ViTConfig",
                     dict(intermediate_size=64, num_labels=5, layer_norm_eps=1e-3), "logits"),
    "vit-headless": ("ViTModel", "ViTConfig", dict(intermediate_size=64), "features"),
    "deit-distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                       dict(intermediate_size=64, num_labels=5), "logits"),
    "deit-classifier": ("DeiTForImageClassification", "DeiTConfig", dict(intermediate_size=64, num_labels=5),
                        "logits"),
    "deit-headless": ("DeiTModel", "DeiTConfig", dict(intermediate_size=64), "features"),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(layerscale_value=0.5), "pooled"),
    "dinov2-swiglu": ("Dinov2Model", "Dinov2Config", dict(use_swiglu_ffn=True, mlp_ratio=3), "pooled"),
    "dinov2-registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(num_register_tokens=2),
                         "pooled"),
}


def hf_model(case: str, seed: int = 0):
    model_cls, config_cls, extra, _ = HF_CASES[case]
    config = getattr(transformers, config_cls)(**HF_ARCH, **extra)
    model = getattr(transformers, model_cls)(config)
    return randomize(model, seed)


def hf_outputs(src, case: str, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(the source's output, the timm model's) for the case's compared output."""
    what = HF_CASES[case][3]
    with torch.no_grad():
        out = src(pixel_values=X16)
        if what == "logits":
            return out.logits, model(X16)
        if what == "features":
            return out.last_hidden_state, model.forward_features(X16)
        # pooled: HF's pooler output is the class token after the last LayerNorm; check the tokens too
        assert close(out.last_hidden_state, model.forward_features(X16))
        return out.pooler_output, model(X16)


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_folder_loads_with_no_flags(tmp_path, case):
    src = hf_model(case)
    src.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "size": {"height": 16, "width": 16}}))
    model, info = pe_probe.load_checkpoint(tmp_path / "hf")
    theirs, ours = hf_outputs(src, case, model)
    assert close(ours, theirs)
    assert info.format == "hf" and info.weights_file.endswith("model.safetensors")
    assert info.model_source.startswith(f"Hugging Face {HF_CASES[case][0]}")
    assert model.norm.eps == src.config.layer_norm_eps
    assert info.data["mean"] == [0.5, 0.5, 0.5] and info.data["std"] == [0.25] * 3


def test_hf_layer_norm_eps_comes_from_the_config(tmp_path):
    """With the eps of the config (1e-3) the logits are HF's; with timm's default (1e-6) they are not."""
    src = hf_model("vit-eps-1e-3")
    src.save_pretrained(tmp_path / "hf")
    model, _ = pe_probe.load_checkpoint(tmp_path / "hf")
    foreign.set_layer_norm_eps(model, 1e-6)
    theirs, ours = hf_outputs(src, "vit-eps-1e-3", model)
    assert not close(ours, theirs)


@pytest.mark.parametrize("case", ["vit-classifier", "deit-distilled", "dinov2-swiglu"])
def test_hf_pytorch_model_bin_and_transformers_5_names(tmp_path, case):
    """``pytorch_model.bin`` (weights_only), and a file that holds transformers 5's module names (``q_proj``,
    ``gate_proj``: what ``model.state_dict()`` gives) rather than the names ``save_pretrained`` writes."""
    src = hf_model(case)
    src.save_pretrained(tmp_path / "bin")  # transformers 5 writes safetensors only: the .bin by hand, same names
    saved = tmp_path / "bin" / "model.safetensors"
    torch.save(load_file(str(saved)), tmp_path / "bin" / "pytorch_model.bin")
    saved.unlink()
    model, info = pe_probe.load_checkpoint(tmp_path / "bin")
    assert close(*hf_outputs(src, case, model)) and info.weights_file.endswith("pytorch_model.bin")
    new = sd_of(src)
    assert foreign.hf_naming(new).startswith("transformers>=5"), "transformers < 5: its modules use the saved names"
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "config.json").write_text((tmp_path / "bin" / "config.json").read_text())
    save_file(new, str(tmp_path / "v5" / "model.safetensors"))
    model, info = pe_probe.load_checkpoint(tmp_path / "v5")
    assert close(*hf_outputs(src, case, model)) and "transformers>=5 module names" in info.model_source


def test_hf_vit_pooler_is_dropped_and_said(tmp_path):
    src = randomize(transformers.ViTModel(transformers.ViTConfig(**HF_ARCH, intermediate_size=64)))
    src.save_pretrained(tmp_path / "hf")
    model, info = pe_probe.load_checkpoint(tmp_path / "hf")
    with torch.no_grad():
        assert close(model.forward_features(X16), src(pixel_values=X16).last_hidden_state)
    assert "tanh pooler (pooler.dense) is dropped" in info.model_source and model.num_classes == 0


def test_hf_folder_is_never_a_run_directory(tmp_path):
    src = hf_model("vit-classifier")
    runs = tmp_path / "runs"
    src.save_pretrained(runs / "hf_vit")
    model, info = pe_probe.load_checkpoint(runs / "hf_vit")
    assert info.format == "hf"
    assert RunDir.find(runs) == [] and not RunDir(runs / "hf_vit").is_run()
    with pytest.raises(CheckpointError, match=r"is a Hugging Face transformers folder, not a pe-probe run") as e:
        pe_probe.load_run(runs / "hf_vit")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no EMA"):
        pe_probe.load_checkpoint(runs / "hf_vit", use_ema=True)


@pytest.mark.parametrize("model_type, arch, match", [
    ("swin", "SwinForImageClassification", r"Hugging Face SwinForImageClassification \(model_type='swin'\) is not a "
                                           r"ViT pe-probe converts; supported: .*torchvision.*DINOv2.*open_clip"),
    ("dinov2", "Dinov2ForImageClassification", r"Dinov2ForImageClassification .*class token and the mean patch"),
])
def test_unsupported_hf_architectures_are_one_line_errors(tmp_path, model_type, arch, match):
    if model_type == "swin":
        cfg = transformers.SwinConfig(image_size=16, patch_size=4, embed_dim=16, depths=[1], num_heads=[1])
        src = transformers.SwinForImageClassification(cfg)
    else:
        src = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**HF_ARCH, num_labels=3))
    src.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=match) as e:
        pe_probe.load_checkpoint(tmp_path / "hf")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=match.split(" ")[0]):
        pe_probe.convert_model(src)


# ---------------------------------------------------------------------------------------------- open_clip
def clip_model(seed: int = 0, quick_gelu: bool = False):
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(embed_dim=24, vision_cfg=dict(image_size=16, patch_size=4, width=128, layers=2),
                           text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1),
                           quick_gelu=quick_gelu)
    return randomize(model, seed)


@pytest.mark.parametrize("what", ["clip", "tower", "ddp"])
def test_open_clip_state_dicts_load_as_timm_clip_towers(tmp_path, what):
    src = clip_model()
    sd = sd_of(src.visual) if what == "tower" else sd_of(src)
    if what == "ddp":
        sd = {f"module.{k}": v for k, v in sd.items()}
        torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "clip.pt")  # open_clip's training checkpoint
        path = tmp_path / "clip.pt"
    else:
        path = tmp_path / "clip.safetensors"
        save_file(sd, str(path))
    model, info = pe_probe.load_checkpoint(path)
    with torch.no_grad():
        assert close(model(X16), src.encode_image(X16))
    assert model.norm_pre.weight.shape == (128,) and model.global_pool == "token"
    assert model.head.weight.shape == (24, 128) and not model.head.bias.any()
    assert model.norm.eps == 1e-5 and info.model.endswith("clip_224")
    assert info.data["mean"] == list(timm.data.OPENAI_CLIP_MEAN)


def test_open_clip_quick_gelu_object_exact_and_file_with_act_layer(tmp_path):
    src = clip_model(quick_gelu=True)
    with torch.no_grad():
        assert close(pe_probe.convert_model(src)(X16), src.encode_image(X16))
        save_file(sd_of(src), str(tmp_path / "clip.safetensors"))
        gelu, _ = pe_probe.load_checkpoint(tmp_path / "clip.safetensors")
        quick, info = pe_probe.load_checkpoint(tmp_path / "clip.safetensors", act_layer="quick_gelu")
        assert not close(gelu(X16), src.encode_image(X16)) and close(quick(X16), src.encode_image(X16))
    assert info.model_kwargs["act_layer"] == "quick_gelu"


@pytest.mark.parametrize("name, timm_name", [("ViT-B-32", "vit_base_patch32_clip_224"),
                                             ("ViT-L-14", "vit_large_patch14_clip_224"),
                                             ("ViT-H-14", "vit_huge_patch14_clip_224")])
def test_open_clip_standard_towers_map_to_timms_names(name, timm_name):
    """open_clip's own configs (ViT-H: 16 heads of 80), built on the meta device: timm's name, shapes, heads."""
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_model_config(name)["vision_cfg"]
    with torch.device("meta"):
        tower = open_clip.transformer.VisionTransformer(
            image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=cfg["width"], layers=cfg["layers"],
            heads=cfg["width"] // cfg.get("head_width", 64), mlp_ratio=cfg.get("mlp_ratio", 4.0), output_dim=512)
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=512).state_dict()
    f = foreign.from_open_clip(tower.state_dict())
    assert f.model == timm_name and f.kwargs["num_heads"] == tower.transformer.resblocks[0].attn.num_heads
    assert {k: tuple(v.shape) for k, v in f.state_dict.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_open_clip_attention_pooled_tower_is_refused():
    open_clip = pytest.importorskip("open_clip")
    tower = open_clip.transformer.VisionTransformer(image_size=16, patch_size=4, width=64, layers=1, heads=1,
                                                   mlp_ratio=2.0, attentional_pool=True, attn_pooler_queries=4,
                                                   attn_pooler_heads=1, output_dim=8)
    with pytest.raises(CheckpointError, match=r"CLIP visual tower with attn_pool .* supported: "):
        pe_probe.convert_model(tower)


# ---------------------------------------------------------------------------------------------- model objects
def test_convert_model_objects():
    tv = tv_vit(seed=3)
    hf = hf_model("deit-distilled", seed=4)
    with torch.no_grad():
        assert close(pe_probe.convert_model(tv)(X16), tv(X16))
        assert close(pe_probe.convert_model(hf)(X16), hf(pixel_values=X16).logits)
    own = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, num_classes=2)
    assert pe_probe.convert_model(own) is own
    with pytest.raises(CheckpointError, match=r"^torchvision ResNet is not a ViT pe-probe converts; supported: "):
        pe_probe.convert_model(torchvision.models.resnet18(weights=None))


def test_probe_ablate_attribute_take_model_objects():
    tv = tv_vit(seed=5)
    timm_model = pe_probe.convert_model(tv)
    ours, theirs = (pe_probe.probe(m, X16, progress=False) for m in (tv, timm_model))
    assert ours.arrays.keys() == theirs.arrays.keys()
    for k in ours.arrays:
        np.testing.assert_allclose(ours.arrays[k], theirs.arrays[k], rtol=1e-6, atol=1e-6, err_msg=k)
    hf = hf_model("vit-classifier", seed=6)
    hf_timm = pe_probe.convert_model(hf)
    a, b = (pe_probe.ablate(m, X16, progress=False) for m in (hf, hf_timm))
    assert a.sites == b.sites
    np.testing.assert_allclose(a.frame()["value"].to_numpy(), b.frame()["value"].to_numpy(), atol=1e-6)
    a, b = (pe_probe.attribute(m, X16, n_steps=4, warn_rel_delta=10.0, progress=False) for m in (hf, hf_timm))
    np.testing.assert_allclose(a.frame()["value"].to_numpy(), b.frame()["value"].to_numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- command line
def test_cli_takes_foreign_checkpoints_with_no_flags(tmp_path, fake_data, capsys):
    from pe_probe.cli import main

    src = hf_model("vit-classifier")
    src.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                         "image_std": [0.25] * 3}))
    assert main(["probe", str(tmp_path / "hf"), "--data", "toy", "--out", str(tmp_path / "rep"), "--no-progress",
                 "--max-images", "4"]) == 0
    assert "Hugging Face ViTForImageClassification" in capsys.readouterr().out
    meta = pe_probe.ProbeReport.load(tmp_path / "rep").meta
    assert meta["checkpoint_format"] == "hf" and meta["n_images"] == 4
    assert fake_data[0]["img_size"] == 16 and list(fake_data[0]["mean"]) == [0.5] * 3
    assert list(fake_data[0]["std"]) == [0.25] * 3
    torch.save(tv_vit().state_dict(), tmp_path / "vit_b.pth")
    assert main(["ablate", str(tmp_path / "vit_b.pth"), "--data", "toy", "--out", str(tmp_path / "abl"),
                 "--no-progress", "--max-images", "4"]) == 0
    (tmp_path / "swin").mkdir()
    (tmp_path / "swin" / "config.json").write_text(json.dumps({"model_type": "swin"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "swin" / "model.safetensors"))
    assert main(["probe", str(tmp_path / "swin"), "--data", "toy", "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model_type='swin'" in err and "supported:" in err and "\n" not in err and not (tmp_path / "r3").exists()


def test_broken_foreign_weights_are_one_line_errors(tmp_path):
    sd = sd_of(tv_vit())
    del sd["encoder.layers.encoder_layer_0.mlp.0.weight"]
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"torchvision VisionTransformer: the weights have no blocks.0.mlp.fc1"):
        pe_probe.load_checkpoint(tmp_path / "tv.pth")
    sd = sd_of(tv_vit())
    sd["encoder.layers.encoder_layer_0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"key 'encoder.layers.encoder_layer_0.extra.weight' has no timm"):
        pe_probe.load_checkpoint(tmp_path / "tv.pth")
    src = hf_model("vit-classifier")
    src.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 5}))
    with pytest.raises(CheckpointError, match=r"num_attention_heads=5 does not divide the width 32"):
        pe_probe.load_checkpoint(tmp_path / "hf")
