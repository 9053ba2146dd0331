"""Regenerate analyses/explore.ipynb from the cells below (keeps the notebook reviewable as code)."""

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("md", """# Exploring position embeddings with pe-probe

This notebook walks through the Python API: train two tiny ViTs on scikit-learn's digits (PVG and MPVG),
probe them, plot a metric per layer, compare the two runs, look at the token and PE maps, and check the
observation that an MPVG model with GAP is a PVG model with a shifted head bias.

Everything runs on a laptop CPU in about a minute. Set `PE_PROBE_NB_EPOCHS` to train longer. The runs go to a
temporary folder that the last cell removes (set `PE_PROBE_NB_DIR` to keep them somewhere)."""),
    ("code", """import os, shutil, tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import pe_probe
from pe_probe.analysis import summary_frame
from pe_probe.figures import map_heatmap

EPOCHS = int(os.environ.get("PE_PROBE_NB_EPOCHS", "8"))
OWN_WORK = not os.environ.get("PE_PROBE_NB_DIR")  # a temporary folder of ours: removed at the end
WORK = Path(tempfile.mkdtemp(prefix="pe-probe-nb-") if OWN_WORK else os.environ["PE_PROBE_NB_DIR"])
WORK"""),
    ("md", """## 1. Train two runs
`pe_probe.train` takes the knobs of the model family (`pe_mode`, `global_pool`, `last_ln_pe`, ...) and a
recipe; with no data set named it uses the embedded digits recipe. Each call writes a run directory
(`config.json`, `model.safetensors`, `metrics.jsonl`, `summary.json`). One seed per scheme: a difference of a
point or two between the two accuracies is within what another seed changes (`pe-probe reproduce` trains
three seeds per scheme and reports intervals)."""),
    ("code", """runs = {}
for mode in ("pvg", "mpvg"):
    runs[mode] = pe_probe.train(out=WORK / mode, pe_mode=mode, epochs=EPOCHS, progress=False, verbose=False)
{k: pe_probe.load_run(v).summary["top1"] for k, v in runs.items()}"""),
    ("md", """## 2. Probe a checkpoint
`pe_probe.probe` streams the validation images through the model with hooks on its named hook points and
keeps running sums only, so memory does not grow with the data. The result is a `ProbeReport`;
`summary_frame` turns it into a tidy table."""),
    ("code", """model = pe_probe.load_model(runs["mpvg"])
print(pe_probe.hook_names(model)[:8], "...")
report = pe_probe.probe(model, "digits", progress=False, run="mpvg")
frame = summary_frame(report)
frame.head()"""),
    ("md", """## 3. Plot one metric per layer
The paper's central number is the Pearson correlation between the image-averaged token map and the PE map of
each layer; on DeiT-Ti it reports values from -0.37 to -0.95, more negative with depth. The cell below plots
it for this run, with its positional part (each channel's mean over the tokens removed) and its per-channel
part, and prints what this run shows."""),
    ("code", """parts = ["tok_pe_corr", "tok_pe_corr_position", "tok_pe_corr_channel"]
corr = frame[frame.metric.isin(parts) & (frame.layer >= 0)]
ax = sns.lineplot(data=corr, x="layer", y="value", hue="metric", marker="o")
ax.axhline(0, color="0.7", lw=0.8)
ax.set(ylabel="Pearson r", title="MPVG on digits (one seed)")
r = corr[corr.metric == "tok_pe_corr"].set_index("layer")["value"]
slope = np.polyfit(r.index, r.to_numpy(), 1)[0]
print(f"r from {r.iloc[0]:+.3f} (block {r.index[0]}) to {r.iloc[-1]:+.3f} (block {r.index[-1]}); "
      f"{'negative' if (r < 0).all() else 'positive' if (r > 0).all() else 'of both signs'} at these blocks, "
      f"slope over blocks {slope:+.3f} per block ({'more negative' if slope < 0 else 'less negative or rising'} with depth)")"""),
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
`mean_maps(layer)` returns the (tokens x channels) maps averaged over the probed images; they share one
zero-centred colour scale here so that opposite signs show as opposite colours."""),
    ("code", """layer = report.meta["receiving_blocks"][-1]
tok, pe = report.mean_maps(layer)
v = float(np.abs(np.concatenate([tok.ravel(), pe.ravel()])).max())
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
map_heatmap(tok, ax=axes[0], title=f"tokens, layer {layer}", cmap="RdBu_r", vmin=-v, vmax=v, colorbar=True)
map_heatmap(pe, ax=axes[1], title=f"PE, layer {layer}", cmap="RdBu_r", vmin=-v, vmax=v, colorbar=True)
fig.tight_layout()"""),
    ("md", """## 6. MPVG with GAP is PVG with a shifted head bias
With global average pooling followed by a linear head, the PE added after the Last LN contributes the same
vector to every image. `mpvg_constant_offset_check` folds it into the head bias and returns the largest
logit difference between the two models on real images; the cell prints whether it is at float-rounding
level."""),
    ("code", """import torch
from pe_probe.data import build_dataset

ds = build_dataset("digits", train=False, img_size=model.patch_embed.img_size[0], in_chans=model.in_chans)
images = torch.stack([ds[i][0] for i in range(64)])
diff = pe_probe.mpvg_constant_offset_check(model, images)
print(f"max |logit difference| = {diff:.2e}: "
      + ("float rounding, the two models compute the same function" if diff < 1e-4 else "NOT the same function"))
diff"""),
    ("md", """## 7. Clean up
The runs were written to a temporary folder of this notebook; remove it (unless `PE_PROBE_NB_DIR` was set)."""),
    ("code", """if OWN_WORK:
    shutil.rmtree(WORK, ignore_errors=True)
print("removed" if OWN_WORK and not WORK.exists() else f"kept {WORK}")"""),
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
