"""Vocabularies several floors share that belong to no container of their own (torch-free), defined once: the
parts of a data set a command reads, the verdicts of a claim, the probe's statistics backends, the probe's adapters
and reproduce's executors.
The CLI builds its choices from them."""

from __future__ import annotations

#: The parts of a data set ``build_dataset(split=...)``, ``pe-probe eval --split`` and ``probe --split`` read:
#: the training split, the validation split, or every image of a plain folder of class folders.
SPLITS = ("train", "val", "all")

#: The verdicts of a claim (``pe_probe.analysis.claims``), in the order summaries count them.
VERDICTS = ("supported", "contradicted", "inconclusive")

#: How the probe's float64 statistics step (``RunningStats.flush``, once per ring of batches) runs:
#: ``eager`` (default) op by op, ``compile`` fused by ``torch.compile`` (once per ring shape, ``dynamic=False``;
#: on CPU it needs a C++ compiler; where compiling is unavailable or fails, one warning and eager). Both give
#: the same report to float64 rounding (1e-12 relative, tested); the per-layer float32 passes stay eager.
STATS_BACKENDS = ("eager", "compile")

#: How the probe reads a model (``adapter=`` of ``pe_probe.probe``/``capture``/``hook_names``, ``probe --adapter``):
#: its own family (``auto``), forced as a pe_* model (``pe``) or as a plain timm ViT (``timm``).
ADAPTERS = ("auto", "pe", "timm")

#: Where ``reproduce --executor`` submits its jobs through submitit: a SLURM cluster, or this machine.
EXECUTORS = ("slurm", "local")
