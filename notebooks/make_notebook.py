"""Regenerate notebooks/explore.ipynb from the cells below (keeps the notebook reviewable as code)."""

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("md", """# Exploring position embeddings with pe-probe

This notebook walks through the Python API: train two tiny ViTs on scikit-learn's digits (PVG and MPVG),
probe them, plot a metric per layer, compare the two runs, look at the token and PE maps, and check the
observation that an MPVG model with GAP is a PVG model with a shifted head bias.

Everything runs on a laptop CPU in about a minute. Set `PE_PROBE_NB_EPOCHS` to train longer."""),
    ("code", """import os, tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import pe_probe
from pe_probe.analysis import summary_frame
from pe_probe.figures import map_heatmap

EPOCHS = int(os.environ.get("PE_PROBE_NB_EPOCHS", "8"))
WORK = Path(os.environ.get("PE_PROBE_NB_DIR") or tempfile.mkdtemp(prefix="pe-probe-nb-"))
WORK"""),
    ("md", """## 1. Train two runs
`pe_probe.train` takes the knobs of the model family (`pe_mode`, `global_pool`, `last_ln_pe`, ...) and a
recipe; with no data set named it uses the embedded digits recipe. Each call writes a run directory
(`config.json`, `model.safetensors`, `metrics.jsonl`, `summary.json`)."""),
    ("code", """runs = {}
for mode in ("pvg", "mpvg"):
    runs[mode] = pe_probe.train(out=WORK / mode, pe_mode=mode, epochs=EPOCHS, progress=False, verbose=False)
{k: pe_probe.load_run(v).summary["top1"] for k, v in runs.items()}"""),
    ("md", """## 2. Probe a checkpoint
`pe_probe.probe` streams the validation images through the model with hooks on its named hook points and
keeps running sums only, so memory does not grow with the data. The result is a `ProbeReport`."""),
    ("code", """model = pe_probe.load_model(runs["mpvg"])
print(pe_probe.hook_names(model)[:8], "...")
report = pe_probe.probe(model, "digits", progress=False, run="mpvg")
frame = summary_frame(report)
frame.head()"""),
    ("md", """## 3. Plot one metric per layer
The paper's central number is the Pearson correlation between the averaged token map and the PE map of
each layer: increasingly negative with depth means the PE counterbalances the tokens."""),
    ("code", """corr = frame[(frame.metric == "tok_pe_corr") & (frame.layer >= 0)]
ax = sns.lineplot(data=corr, x="layer", y="value", marker="o")
ax.set(ylabel="token-PE correlation", title="MPVG on digits")
corr"""),
    ("md", """## 4. Compare two runs
Reports of different runs stack into one tidy frame."""),
    ("code", """reports = {"mpvg": report,
           "pvg": pe_probe.probe(pe_probe.load_model(runs["pvg"]), "digits", progress=False, run="pvg")}
both = pd.concat([summary_frame(r) for r in reports.values()], ignore_index=True)
metrics = ["tok_pe_corr", "tok_pe_cos_mean", "tok_norm_mean", "pe_norm_mean"]
g = sns.relplot(data=both[both.metric.isin(metrics) & (both.layer >= 0)], x="layer", y="value", hue="run",
                col="metric", col_wrap=2, kind="line", marker="o", facet_kws={"sharey": False}, height=2.5)
both[both.layer == -1].pivot_table(index="metric", columns="run", values="value")"""),
    ("md", """## 5. Token and PE maps of one layer
`mean_maps(layer)` returns the (tokens x channels) maps averaged over the probed images."""),
    ("code", """layer = report.meta["receiving_blocks"][-1]
tok, pe = report.mean_maps(layer)
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
map_heatmap(tok, ax=axes[0], title=f"tokens, layer {layer}")
map_heatmap(pe, ax=axes[1], title=f"PE, layer {layer}")
fig.tight_layout()"""),
    ("md", """## 6. MPVG with GAP is PVG with a shifted head bias
With global average pooling followed by a linear head, the PE added after the Last LN contributes the same
vector to every image. `mpvg_constant_offset_check` folds it into the head bias and reports the largest
logit difference between the two models on real images: float rounding only."""),
    ("code", """import torch
from pe_probe.data import build_dataset

ds = build_dataset("digits", train=False, img_size=model.patch_embed.img_size[0], in_chans=model.in_chans)
images = torch.stack([ds[i][0] for i in range(64)])
pe_probe.mpvg_constant_offset_check(model, images)"""),
]


def build() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in CELLS]
    return nb


if __name__ == "__main__":
    path = Path(__file__).with_name("explore.ipynb")
    nbf.write(build(), path)
    print(f"wrote {path}")
