"""ViTs from other libraries as timm models: torchvision ``VisionTransformer``, Hugging Face transformers ViT /
DeiT / DINOv2, and open_clip / OpenAI CLIP visual towers.

Each source is read from its own key names (state dict or model object) into timm's ``VisionTransformer``
names, with the architecture taken from the state dict's shapes (plus the source's config where it has one):
:func:`from_torchvision`, :func:`from_hf`, :func:`from_open_clip` return a :class:`Foreign` (timm name, JSON
constructor kwargs, converted state dict, LayerNorm eps), :func:`build` builds it and :func:`convert_model`
turns a model object into the equivalent timm model. timm's own converters are used where it has one
(``_convert_openai_clip`` for CLIP towers, ``_convert_dinov2`` for DINOv2's layer scale, SwiGLU and register
layout); torchvision and transformers key names have none in timm and are mapped here. No source library is
imported: an object is recognised by its class's module and read through ``state_dict()`` and its attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError

#: Sources this module converts, as error messages name them.
SUPPORTED = ("torchvision VisionTransformer (vit_b_16, ...)", "Hugging Face ViT, DeiT (incl. distilled), DINOv2 "
             "(+ registers)", "open_clip / OpenAI CLIP ViT visual tower")
#: timm's ViT size names: (width, depth, heads) -> name, to pick the registered timm name of a standard model.
VIT_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
             (1280, 32, 16): "huge", (1536, 40, 24): "giant"}
#: Head counts of the standard ViT sizes, (width, depth) -> heads (Ti, S, B, L, H, open_clip's g and bigG,
#: DINOv2's g): torchvision, OpenAI and open_clip state dicts do not record the head count.
STANDARD_HEADS = {(192, 12): 3, (384, 12): 6, (768, 12): 12, (1024, 24): 16, (1280, 32): 16, (1408, 40): 16,
                  (1664, 48): 16, (1536, 40): 24}
#: The head width assumed for any other size (ViT-Ti to ViT-L's).
HEAD_DIM = 64


def guess_heads(width: int, depth: int) -> int:
    """The head count of a ViT whose weights do not record it: the standard size's (:data:`STANDARD_HEADS`),
    else ``width // 64``."""
    return STANDARD_HEADS.get((width, depth), max(1, width // HEAD_DIM))
#: Hugging Face ``hidden_act`` -> timm ``act_layer`` (names timm's ``get_act_layer`` knows).
HF_ACTS = {"gelu": None, "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu",
           "relu": "relu", "silu": "silu"}
#: Hugging Face ``model_type`` values this module reads.
HF_MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")


@dataclass(frozen=True)
class Foreign:
    """A foreign ViT read into timm's terms.

    Attributes:
        source: ``torchvision``, ``hf`` or ``open_clip``.
        model: the timm model name (the registered standard model where the shapes are one, else the nearest
            family member; ``kwargs`` set the architecture either way).
        kwargs: JSON constructor kwargs for ``timm.create_model``.
        state_dict: the weights under timm's key names.
        layer_norm_eps: the source's LayerNorm epsilon, set on every LayerNorm of the built model.
        described: what was found, in words (e.g. ``"torchvision VisionTransformer, patch 16, width 768, ..."``).
        notes: what the timm model leaves out (e.g. HF ViT's tanh pooler), each a short sentence.
    """

    source: str
    model: str
    kwargs: dict
    state_dict: dict[str, torch.Tensor]
    layer_norm_eps: float
    described: str
    notes: tuple[str, ...] = field(default=())


def _unsupported(found: str) -> CheckpointError:
    return CheckpointError(f"{found} is not a ViT pe-probe converts; supported: {'; '.join(SUPPORTED)}")


def _img_size(grid: int, patch: int) -> int:
    return grid * patch


def _grid_of(n_tokens: int, prefix: int, what: str) -> int:
    n = n_tokens - prefix
    side = int(round(n ** 0.5))
    if side * side != n or n <= 0:
        raise CheckpointError(f"{what}: a position embedding of {n_tokens} rows is not {prefix} prefix rows plus a "
                              "square patch grid")
    return side


def _mlp_ratio(hidden: int, width: int) -> float:
    """The ``mlp_ratio`` timm turns back into ``hidden`` (``int(width * ratio)``), safe from float rounding."""
    return (hidden + 0.5) / width if hidden % width else float(hidden // width)


def _vit_name(width: int, depth: int, heads: int, patch: int, img: int, fallback: str,
              fmt: str = "vit_{s}_patch{p}_{i}") -> str:
    """timm's registered name for a standard size (``fmt`` filled with size, patch, image size), else
    ``fallback`` (the kwargs set the architecture either way)."""
    import timm

    size = VIT_SIZES.get((width, depth, heads))
    name = fmt.format(s=size, p=patch, i=img) if size else None
    return name if name and timm.is_model(name) else fallback


def _depth(sd: dict, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


# ---------------------------------------------------------------------------------------------- torchvision
#: torchvision ``VisionTransformer`` key -> timm key (regex, replacement); ``mlp.linear_1``/``linear_2`` are the
#: names before torchvision 0.13 (its ``_load_from_state_dict`` still maps them).
_TORCHVISION_KEYS = (
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
)


def is_torchvision_vit(sd: dict) -> bool:
    """Whether a state dict is a torchvision ``VisionTransformer``'s (``conv_proj`` + ``encoder.pos_embedding``)."""
    return "encoder.pos_embedding" in sd and any(k.startswith("conv_proj.") for k in sd)


def _require(out: dict, keys: tuple[str, ...], what: str) -> None:
    """A converted state dict has the keys its shapes are read from (else one line naming the first missing)."""
    missing = [k for k in keys if k not in out]
    if missing:
        raise CheckpointError(f"{what}: the weights have no {missing[0]} (after conversion to timm's names)")


#: The converted keys the architecture is read from.
_SHAPE_KEYS = ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight")


def _rename(sd: dict, rules, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise CheckpointError(f"{what}: key {key!r} has no timm counterpart pe-probe knows")
    return out


def from_torchvision(sd: dict[str, torch.Tensor], num_heads: int | None = None, layer_norm_eps: float = 1e-6,
                     ) -> Foreign:
    """A torchvision ``VisionTransformer`` state dict as the matching timm ViT (``vit_b_16`` ->
    ``vit_base_patch16_224``, ...). The head count is not in the weights: ``num_heads`` (a model object knows
    it), else :func:`guess_heads` (right for every torchvision ViT). ``vit_h_14``'s conv stem variant and a
    ``pre_logits`` representation layer have no timm counterpart and are refused."""
    what = "torchvision VisionTransformer"
    if any(k.startswith("conv_proj.conv_") for k in sd):
        raise _unsupported(f"{what} with a convolutional stem (conv_stem_configs)")
    if any(k.startswith("heads.pre_logits") for k in sd):
        raise _unsupported(f"{what} with a representation layer (heads.pre_logits, tanh)")
    out = _rename(sd, _TORCHVISION_KEYS, what)
    _require(out, _SHAPE_KEYS, what)
    width, _, patch, _ = out["patch_embed.proj.weight"].shape
    depth = _depth(out, r"blocks\.(\d+)\.")
    heads = num_heads or guess_heads(width, depth)
    grid = _grid_of(out["pos_embed"].shape[1], 1, what)
    img = _img_size(grid, patch)
    kwargs = dict(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                  mlp_ratio=_mlp_ratio(out["blocks.0.mlp.fc1.weight"].shape[0], width),
                  num_classes=int(out["head.weight"].shape[0]) if "head.weight" in out else 0,
                  class_token=True, global_pool="token")
    name = _vit_name(width, depth, heads, patch, img, "vit_base_patch16_224")
    return Foreign("torchvision", name, kwargs, out, layer_norm_eps,
                   f"{what}: patch {patch}, width {width}, {depth} blocks, {heads} heads, {img} px")


# ---------------------------------------------------------------------------------------------- Hugging Face
#: Hugging Face key -> timm (or DINOv2's original) key, for both generations of transformers' names: the
#: files every version writes (``encoder.layer.N.attention.attention.query``, ``intermediate.dense``) and
#: transformers 5's modules (``layers.N.attention.q_proj``, ``mlp.gate_proj``). q/k/v are joined afterwards.
_HF_BLOCK = r"^(?:encoder\.layer|layers)\.(\d+)\."
_HF_KEYS = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^cls_classifier\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
    (_HF_BLOCK + r"attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (_HF_BLOCK + r"attention\.([qkv])_proj\.", r"blocks.\1.attn.\2."),
    (_HF_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (_HF_BLOCK + r"(?:layernorm_before|norm1)\.", r"blocks.\1.norm1."),
    (_HF_BLOCK + r"(?:layernorm_after|norm2)\.", r"blocks.\1.norm2."),
    (_HF_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_HF_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
    (_HF_BLOCK + r"mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (_HF_BLOCK + r"mlp\.(gate|up)_proj\.", r"blocks.\1.mlp.\2."),
    (_HF_BLOCK + r"mlp\.(?:weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
    (_HF_BLOCK + r"layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
)
_HF_PREFIXES = ("vit.", "deit.", "dinov2.")


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without the first of ``prefixes`` it starts with (a task model's backbone attribute)."""
    return next((key[len(p):] for p in prefixes if key.startswith(p)), key)


def _join(out: dict, parts: tuple[str, ...], joined: str, what: str) -> None:
    """Concatenate ``blocks.N.{part}.{weight,bias}`` (rows) into ``blocks.N.{joined}.*``."""
    for key in [k for k in out if re.match(rf"blocks\.\d+\.{re.escape(parts[0])}\.(weight|bias)$", k)]:
        stem, suffix = key[: -len(parts[0]) - len(key.rsplit(".", 1)[1]) - 2], key.rsplit(".", 1)[1]
        names = [f"{stem}.{p}.{suffix}" for p in parts]
        if not all(n in out for n in names):
            raise CheckpointError(f"{what}: {names[0]} without {' and '.join(names[1:])}")
        out[f"{stem}.{joined}.{suffix}"] = torch.cat([out.pop(n) for n in names], 0)


def hf_naming(sd: dict) -> str:
    """Which generation of transformers' key names a state dict uses (both load)."""
    new = any(re.search(r"\.(?:[qkvo]_proj|gate_proj|down_proj)\.", k) for k in sd)
    return "transformers>=5 module names (q_proj, o_proj)" if new else "saved names (attention.attention.query)"


def from_hf(config: dict, sd: dict[str, torch.Tensor]) -> Foreign:
    """A Hugging Face ViT / DeiT / DINOv2 (``config.json`` as a dict, state dict with any of transformers' key
    generations) as a timm model; LayerNorm eps, activation, head count and image size come from the config.

    - ``vit``: ``ViTForImageClassification`` -> ``vit_*`` with its classifier; ``ViTModel`` -> headless
      (``num_classes=0``; the tanh pooler, which timm has no layer for, is dropped and noted).
    - ``deit``: ``DeiTForImageClassificationWithTeacher`` -> ``deit_*_distilled_*`` (logits: the mean of both
      heads, as HF); ``DeiTForImageClassification`` / ``DeiTModel`` -> a ViT whose distillation token is a
      register token (``reg_tokens=1``, same order, same PE rows; the class token is pooled).
    - ``dinov2`` / ``dinov2_with_registers``: ``Dinov2Model`` -> ``vit_*_dinov2`` (layer scale, SwiGLU, registers
      through timm's ``_convert_dinov2``), headless: features are HF's ``last_hidden_state`` and the pooled
      output its ``pooler_output``. ``Dinov2ForImageClassification`` (a head on class token + mean patch
      token) has no timm counterpart and is refused.
    """
    from timm.models.vision_transformer import _convert_dinov2

    mtype = config.get("model_type")
    archs = config.get("architectures") or []
    what = f"Hugging Face {archs[0] if archs else mtype} (model_type={mtype!r})"
    if mtype not in HF_MODEL_TYPES:
        raise _unsupported(what)
    act = config.get("hidden_act", "gelu")
    if act not in HF_ACTS:
        raise CheckpointError(f"{what}: hidden_act={act!r} has no timm activation pe-probe maps; known: "
                              f"{', '.join(HF_ACTS)}")
    sd = {_strip(k, _HF_PREFIXES): v for k, v in sd.items()}
    notes = []
    if any(k.startswith("pooler.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
        notes.append("the tanh pooler (pooler.dense) is dropped: timm has no such layer; compare features")
    naming = hf_naming(sd)
    out = _rename(sd, _HF_KEYS, what)
    _join(out, ("attn.q", "attn.k", "attn.v"), "attn.qkv", what)
    _join(out, ("attn.query", "attn.key", "attn.value"), "attn.qkv", what)
    _join(out, ("mlp.gate", "mlp.up"), "mlp.w12", what)
    _require(out, _SHAPE_KEYS[:2], what)
    width, chans, patch, _ = out["patch_embed.proj.weight"].shape
    depth = _depth(out, r"blocks\.(\d+)\.")
    heads = config.get("num_attention_heads")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or width % heads:
        raise CheckpointError(f"{what}: config.json num_attention_heads={heads!r} does not divide the width {width}")
    kwargs: dict[str, Any] = dict(patch_size=int(patch), embed_dim=int(width), depth=depth, num_heads=heads,
                                  in_chans=int(chans), qkv_bias=bool(config.get("qkv_bias", True)),
                                  class_token=True, global_pool="token")
    if HF_ACTS[act]:
        kwargs["act_layer"] = HF_ACTS[act]
    eps = float(config.get("layer_norm_eps", 1e-12))
    if mtype.startswith("dinov2"):
        if "classifier.weight" in sd:
            raise _unsupported(f"{what} (a head on the class token and the mean patch token)")
        swiglu = bool(config.get("use_swiglu_ffn")) or "blocks.0.mlp.w12.weight" in out
        regs = int(out["register_tokens"].shape[1]) if "register_tokens" in out else 0
        grid = _grid_of(out["pos_embed"].shape[1], 1, what)
        out = _convert_dinov2(out, None)
        _require(out, _SHAPE_KEYS, what)
        hidden = out["blocks.0.mlp.fc1.weight"].shape[0]
        kwargs.update(init_values=1.0 if "blocks.0.ls1.gamma" in out else None, num_classes=0,
                      mlp_ratio=_mlp_ratio(hidden, width))
        if regs:
            kwargs.update(reg_tokens=regs, no_embed_class=True)
        if swiglu:
            kwargs.pop("act_layer", None)  # SwiGLU's SiLU comes with timm's giant DINOv2 (SwiGLUPacked)
            name = "vit_giant_patch14_dinov2"
        else:
            fmt = f"vit_{{s}}_patch{{p}}_reg{regs}_dinov2" if regs else "vit_{s}_patch{p}_dinov2"
            name = _vit_name(width, depth, heads, patch, 0, "vit_small_patch14_dinov2", fmt)
    else:
        _require(out, _SHAPE_KEYS, what)
        hidden = out["blocks.0.mlp.fc1.weight"].shape[0]
        kwargs["mlp_ratio"] = _mlp_ratio(hidden, width)
        kwargs["num_classes"] = int(out["head.weight"].shape[0]) if "head.weight" in out else 0
        if "dist_token" in out and "head_dist.weight" in out:
            grid = _grid_of(out["pos_embed"].shape[1], 2, what)
            name = _vit_name(width, depth, heads, patch, grid * patch, "deit_tiny_distilled_patch16_224",
                             "deit_{s}_distilled_patch{p}_{i}")
        elif "dist_token" in out:  # DeiTModel / DeiTForImageClassification: the class token alone is pooled
            grid = _grid_of(out["pos_embed"].shape[1], 2, what)
            out["reg_token"] = out.pop("dist_token")
            kwargs["reg_tokens"] = 1
            name = _vit_name(width, depth, heads, patch, grid * patch, "vit_base_patch16_224")
        else:
            grid = _grid_of(out["pos_embed"].shape[1], 1, what)
            name = _vit_name(width, depth, heads, patch, grid * patch, "vit_base_patch16_224")
    kwargs["img_size"] = int(grid * patch)
    return Foreign("hf", name, kwargs, out, eps,
                   f"{what}, transformers {config.get('transformers_version', '?')}, {naming}: patch {patch}, "
                   f"width {width}, {depth} blocks, {heads} heads, {grid * patch} px, LayerNorm eps {eps:g}",
                   tuple(notes))


# ---------------------------------------------------------------------------------------------- open_clip
def clip_prefix(sd: dict) -> str | None:
    """The key prefix of an open_clip / OpenAI CLIP ViT visual tower in a state dict (``visual.``,
    ``module.visual.`` or ``""`` for the tower alone), or None when there is none."""
    for prefix in ("visual.", "module.visual.", ""):
        if f"{prefix}class_embedding" in sd and f"{prefix}conv1.weight" in sd:
            return prefix
    return None


def from_open_clip(sd: dict[str, torch.Tensor], num_heads: int | None = None, act_layer: str | None = None,
                   layer_norm_eps: float = 1e-5) -> Foreign:
    """An open_clip / OpenAI CLIP ViT visual tower (a whole CLIP state dict or the tower's) as timm's
    ``vit_*_clip_*`` model (``pre_norm=True``, class-token pooling, the projection as a bias-free ``head``),
    converted by timm's ``_convert_openai_clip``. Not in the weights: the head count (``num_heads``, else
    :func:`guess_heads`, right for every OpenAI and open_clip ViT) and the activation (``act_layer="quick_gelu"`` for
    OpenAI's weights and open_clip's ``-quickgelu`` models; GELU otherwise, open_clip's default)."""
    from timm.models.vision_transformer import _convert_openai_clip

    prefix = clip_prefix(sd)
    what = "open_clip / OpenAI CLIP visual tower"
    if prefix is None:
        raise _unsupported("a state dict without a CLIP visual tower (class_embedding, conv1)")
    tower = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    odd = [k for k in tower if k.startswith(("attn_pool", "trunk.")) or ".ls_" in k or "ln_attn" in k
           or ".attn.ln_" in k]
    if odd:
        raise _unsupported(f"{what} with {odd[0].split('.')[0]} ({odd[0]})")
    out = _convert_openai_clip(sd, None, prefix=prefix)
    _require(out, _SHAPE_KEYS, what)
    width, _, patch, _ = out["patch_embed.proj.weight"].shape
    depth = _depth(out, r"blocks\.(\d+)\.")
    heads = num_heads or guess_heads(width, depth)
    grid = _grid_of(out["pos_embed"].shape[1], 1, what)
    img = grid * patch
    kwargs: dict[str, Any] = dict(img_size=img, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                                  mlp_ratio=_mlp_ratio(out["blocks.0.mlp.fc1.weight"].shape[0], width),
                                  pre_norm=True, class_token=True, global_pool="token",
                                  num_classes=int(out["head.weight"].shape[0]) if "head.weight" in out else 0)
    if "norm_pre.weight" not in out:
        kwargs["pre_norm"] = False
    if act_layer:
        kwargs["act_layer"] = act_layer
    name = _vit_name(width, depth, heads, patch, img, "vit_base_patch16_clip_224", "vit_{s}_patch{p}_clip_{i}")
    return Foreign("open_clip", name, kwargs, out, layer_norm_eps,
                   f"{what}: patch {patch}, width {width}, {depth} blocks, {heads} heads, {img} px, "
                   f"{act_layer or 'gelu'}, output dim {kwargs['num_classes']}")


# ---------------------------------------------------------------------------------------------- building
def set_layer_norm_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set ``eps`` on every ``nn.LayerNorm`` of ``model`` (the source's value, which timm's constructor
    keywords cannot carry as JSON); returns the model."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    return model


def build(foreign: Foreign, **overrides: Any) -> nn.Module:
    """The timm model of ``foreign`` with its weights, in eval mode (``overrides`` go to its constructor)."""
    import timm

    model = timm.create_model(foreign.model, pretrained=False, **{**foreign.kwargs, **overrides})
    set_layer_norm_eps(model, foreign.layer_norm_eps)
    missing, unexpected = model.load_state_dict(foreign.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{foreign.described}: converted weights do not fit {foreign.model} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def read_object(obj: nn.Module) -> Foreign | None:
    """A torchvision, Hugging Face or open_clip model object as a :class:`Foreign`; None for any other module
    (timm's and pe-probe's own models pass through). Unsupported models of those libraries raise
    :class:`CheckpointError`."""
    mod, cls = _module_of(obj), type(obj).__name__
    if mod.startswith("torchvision.models"):
        if cls != "VisionTransformer":
            raise _unsupported(f"torchvision {cls}")
        attn = obj.encoder.layers[0].self_attention
        return from_torchvision(obj.state_dict(), num_heads=int(attn.num_heads), layer_norm_eps=obj.encoder.ln.eps)
    if mod.split(".")[0] == "transformers":
        config = getattr(obj, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            raise _unsupported(f"Hugging Face {cls} (no config)")
        cfg = {**config.to_dict(), "architectures": [cls]}
        return from_hf(cfg, obj.state_dict())
    if mod.startswith("open_clip"):
        tower = getattr(obj, "visual", obj)
        if type(tower).__name__ != "VisionTransformer":
            raise _unsupported(f"open_clip {cls} with a {type(tower).__name__} visual tower")
        block = tower.transformer.resblocks[0]
        act = "quick_gelu" if type(block.mlp.gelu).__name__ == "QuickGELU" else None
        return from_open_clip(tower.state_dict(), num_heads=int(block.attn.num_heads), act_layer=act,
                              layer_norm_eps=float(tower.ln_post.eps))
    return None


def convert_model(obj: nn.Module) -> nn.Module:
    """``obj`` as a timm model: a torchvision ``VisionTransformer``, a Hugging Face ViT / DeiT / DINOv2 or an
    open_clip CLIP model (its visual tower) becomes the timm ``VisionTransformer`` that computes the same
    logits (features for headless models), on ``obj``'s device and in eval mode; any other module is returned
    as it is. ``pe_probe.probe``, ``ablate`` and ``attribute`` call it on the model they are given."""
    foreign = read_object(obj)
    if foreign is None:
        return obj
    try:
        device = next(obj.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return build(foreign).to(device)
