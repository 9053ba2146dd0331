"""Vocabularies several floors share that belong to no container of their own (torch-free), defined once: the
parts of a data set a command reads, and the verdicts of a claim. The CLI builds its choices from them."""

from __future__ import annotations

#: The parts of a data set ``build_dataset(split=...)``, ``pe-probe eval --split`` and ``probe --split`` read:
#: the training split, the validation split, or every image of a plain folder of class folders.
SPLITS = ("train", "val", "all")

#: The verdicts of a claim (``pe_probe.analysis.claims``), in the order summaries count them.
VERDICTS = ("supported", "contradicted", "inconclusive")
