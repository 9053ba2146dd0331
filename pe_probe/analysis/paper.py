"""The numbers the paper reports, as data, each with where it comes from.

Lee, Ham, Kim, "Maximizing the Position Embedding for Vision Transformers with Global Average Pooling"
(AAAI 2025, arXiv 2502.02919), as listed in ``docs/science.md``. Figures draw these as
reference overlays and tables print them beside our numbers. Pure Python: no numpy, no torch.

Method keys are the preset names (``default``, ``lape``, ``pvg``, ``mpvg``); accuracies are top-1 %.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UnknownNameError

@dataclass(frozen=True)
class Reported(Mapping):
    """A group of reported numbers (a read-only mapping) with its source and unit."""

    data: Mapping[Any, Any]
    source: str
    unit: str = ""
    notes: str = ""

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


METHODS: tuple[str, ...] = ("default", "lape", "pvg", "mpvg")

#: Top-1 % per backbone and method (Tables 1-2). ViT-Lite is on CIFAR-100, the others on ImageNet-1K.
ACCURACY = Reported(
    {
        "DeiT-Ti": {"default": 72.14, "lape": 72.94, "pvg": 73.17, "mpvg": 73.51},
        "DeiT-S": {"default": 79.81, "lape": 80.39, "pvg": 80.38, "mpvg": 80.61},
        "DeiT-B": {"default": 81.85, "lape": 82.15, "pvg": 82.21, "mpvg": 82.42},
        "Swin-Ti": {"default": 81.37, "lape": 81.48, "pvg": 81.52, "mpvg": 81.64},
        "CeiT-Ti": {"default": 76.62, "lape": 76.89, "pvg": 77.14, "mpvg": 77.20},
        "T2T-ViT-7": {"default": 71.76, "lape": 72.01, "pvg": 71.91, "mpvg": 72.28},
        "ViT-Lite-7/4": {"default": 74.90, "lape": 75.52, "pvg": 76.67, "mpvg": 76.87},
    },
    source="Tables 1-2: top-1 accuracy per backbone (ImageNet-1K; ViT-Lite-7/4 on CIFAR-100)",
    unit="top-1 %",
)

#: Fig 1, DeiT-Ti. "GAP + Layer-wise" has no number in the paper's text or tables (the paper draws it below
#: both GAP and Layer-wise), so it is absent rather than guessed.
FIG1 = Reported(
    {"default": 72.14, "gap": 72.40, "layerwise": 72.94, "mpvg": 73.51},
    source="Fig 1 (DeiT-Ti): Default and Layer-wise (LaPE) and MPVG as in Table 1, GAP as in Fig 5",
    unit="top-1 %",
    notes="GAP + Layer-wise is drawn in the paper but no number for it is given.",
)

#: Fig 5, DeiT-Ti, non-layer-wise: GAP alone vs GAP with the PE added to the Last LN.
FIG5 = Reported(
    {"gap": 72.40, "gap_last_ln_pe": 72.14},
    source="Fig 5b (DeiT-Ti, non-layer-wise): GAP vs GAP + PE in the Last LN",
    unit="top-1 %",
)

#: Fig 2, DeiT-Ti layer-wise: Pearson correlation of the token and PE heatmaps per block.
FIG2_CORRELATION = Reported(
    {1: -0.37, 4: -0.67, 7: -0.82, 9: -0.85, 11: -0.95},
    source="Fig 2 (DeiT-Ti, layer-wise): correlation of token vs PE map at layers 1, 4, 7, 9, 11",
    unit="Pearson r",
)

#: Fig 6: variance of the Last LN's beta over channels.
FIG6_BETA_VARIANCE = Reported(
    {"pvg": 0.2387, "mpvg": 0.0193},
    source="Fig 6 (DeiT-Ti): variance of the Last LN beta, PVG vs MPVG",
    unit="variance",
)

#: Fig 6: cosine similarity of the class token (token pooling) or the token average (GAP) before vs
#: after the Last LN, in PVG.
FIG6_COSINE = Reported(
    {"token": 0.4597, "avg": 0.2995},
    source="Fig 6 (DeiT-Ti PVG): cosine before vs after the Last LN, class token vs GAP token average",
    unit="cosine",
)

#: Table 5, DeiT-Ti MPVG: which PE feeds the Last LN (key = k of pos_k; 0 is pos_0).
TABLE5 = Reported(
    {11: 73.30, 8: 73.38, 5: 73.39, 0: 73.51},
    source="Table 5 (DeiT-Ti MPVG): PE fed to the Last LN, pos_11 / pos_8 / pos_5 / pos_0",
    unit="top-1 %",
)

#: Table 6, DeiT-Ti MPVG structure ablations, key = (layer0, hierarchical, input_add).
TABLE6 = Reported(
    {(False, True, True): 73.51},
    source="Table 6 (DeiT-Ti MPVG): layer 0 / hierarchical / x+PE ablations",
    unit="top-1 %",
    notes="Only the best combination (no, yes, yes) = 73.51 is restated; the others lie in 73.28-73.48.",
)


#: Every reference by the name specs use for it (``paper = "..."`` in the figure specs, ``pe_probe/figures/specs/*.toml``).
REFERENCES: dict[str, Reported] = {
    "accuracy": ACCURACY,
    "fig1": FIG1,
    "fig2_correlation": FIG2_CORRELATION,
    "fig5": FIG5,
    "fig6_beta_variance": FIG6_BETA_VARIANCE,
    "fig6_cosine": FIG6_COSINE,
    "table5": TABLE5,
    "table6": TABLE6,
}


def reference(name: str) -> Reported:
    """The reported numbers called ``name``; raises ``UnknownNameError`` listing the valid names."""
    try:
        return REFERENCES[name]
    except KeyError:
        raise UnknownNameError(f"paper reference {name!r} is unknown; valid names: {sorted(REFERENCES)}") from None


# --- Backbones: which paper backbone (if any) a run's config is ------------------------------------

@dataclass(frozen=True)
class Backbone:
    """A paper backbone: its registered model names, architecture and the data set the paper used."""

    name: str
    models: tuple[str, ...]
    arch: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "imagenet"


BACKBONES: tuple[Backbone, ...] = (
    Backbone("DeiT-Ti", ("pe_deit_tiny_patch16_224", "deit_tiny_patch16_224"),
             dict(embed_dim=192, depth=12, patch_size=16, img_size=224)),
    Backbone("DeiT-S", ("pe_deit_small_patch16_224", "deit_small_patch16_224"),
             dict(embed_dim=384, depth=12, patch_size=16, img_size=224)),
    Backbone("DeiT-B", ("pe_deit_base_patch16_224", "deit_base_patch16_224"),
             dict(embed_dim=768, depth=12, patch_size=16, img_size=224)),
    Backbone("ViT-Lite-7/4", ("pe_vit_lite_7_4_32",),
             dict(embed_dim=256, depth=7, patch_size=4, img_size=32), dataset="cifar100"),
    Backbone("Swin-Ti", ("swin_tiny_patch4_window7_224",)),
    Backbone("CeiT-Ti", ("ceit_tiny_patch16_224",)),
    Backbone("T2T-ViT-7", ("t2t_vit_7",)),
)


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def backbone_of(config: Mapping[str, Any]) -> str:
    """The paper backbone a run used, as the tables name it, from its ``config.json`` dict.

    A registered variant whose architecture was overridden (``model_kwargs``) is not that backbone:
    it is named ``"<model> (custom, <dataset>)"``. A paper backbone trained on another data set than the paper's
    gets the data set in parentheses, e.g. ``"DeiT-Ti (digits)"``, so it never lands in the paper's column.
    """
    model = str(config.get("model", "?"))
    kwargs = config.get("model_kwargs") or {}
    data = config.get("data") or {}
    dataset = data.get("dataset")
    for bb in BACKBONES:
        if model not in bb.models:
            continue
        used = {**kwargs, "img_size": data.get("img_size", kwargs.get("img_size"))}
        if any(used.get(k) is not None and used[k] != v for k, v in bb.arch.items()):
            return f"{model} (custom, {dataset})" if dataset else f"{model} (custom)"
        if dataset is not None and _norm(bb.dataset) not in _norm(dataset):
            return f"{bb.name} ({dataset})"
        return bb.name
    return f"{model} ({dataset})" if dataset else model
