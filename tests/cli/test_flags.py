"""Every config field has exactly one command-line flag, generated from the field (pe_probe.cli._fields)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pe_probe.cli import build_parser
from pe_probe.cli._fields import field_values
from pe_probe.core.pe import KNOBS
from pe_probe.training import HYPERPARAMETERS, TrainConfig


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_train_config_field_has_a_flag():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert _dests(_subparser("train")) == fields
    # the three parts: every PE knob and every hyperparameter are among them
    assert {k.kwarg for k in KNOBS} | {"pe_mode"} | set(HYPERPARAMETERS) <= fields
    assert {"mixup_switch_prob", "scale"} <= fields  # once missing from the hand-written flags


def test_flags_round_trip_into_the_config():
    args = _subparser("train").parse_args([
        "--out", "r", "--pe-mode", "mpvg", "--no-pe-input-add", "--last-ln-pe", "none", "--global-pool", "token",
        "--mixup-switch-prob", "0.25", "--scale", "0.5", "1", "--randaugment", "none", "--augment",
        "--model-kwargs", "embed_dim=64", "--model-kwargs", "depth=3", "--quiet", "--no-progress", "--seed", "7",
    ])
    cfg = TrainConfig(**field_values(args, TrainConfig))
    assert (cfg.pe_mode, cfg.pe_input_add, cfg.last_ln_pe, cfg.global_pool) == ("mpvg", False, "none", "token")
    assert (cfg.mixup_switch_prob, cfg.scale, cfg.randaugment, cfg.augment) == (0.25, (0.5, 1.0), "none", True)
    assert cfg.model_kwargs == {"embed_dim": 64, "depth": 3}  # repeated flags add up
    assert (cfg.verbose, cfg.progress, cfg.seed) == (False, False, 7)
    resolved = cfg.resolve()
    assert resolved.last_ln_pe is None and resolved.input_add is False and resolved.global_pool == "token"


def test_unset_flags_keep_the_config_defaults():
    args = _subparser("train").parse_args(["--out", "r"])
    assert TrainConfig(**field_values(args, TrainConfig)) == TrainConfig(out="r")


def test_a_key_given_twice_is_an_error():
    args = _subparser("train").parse_args(["--out", "r", "--model-kwargs", "depth=2", "depth=3"])
    with pytest.raises(ValueError, match="depth is given twice"):
        field_values(args, TrainConfig)


def test_the_cli_choices_are_the_core_vocabularies():
    # one spelling of each vocabulary: the parser takes the tuple itself, never a re-typed copy
    from pe_probe.core import causal, vocab
    from pe_probe.pipeline.presets import PRESET_NAMES

    expected = {("attribute", "baseline"): causal.BASELINES, ("attribute", "tokens"): causal.TOKEN_BASELINES,
                ("attribute", "effect"): causal.EFFECTS, ("ablate", "interventions"): causal.INTERVENTIONS,
                ("eval", "split"): vocab.SPLITS, ("probe", "split"): vocab.SPLITS,
                ("probe", "adapter"): vocab.ADAPTERS, ("reproduce", "executor"): vocab.EXECUTORS,
                ("reproduce", "preset"): PRESET_NAMES}
    for (command, dest), vocabulary in expected.items():
        action = next(a for a in _subparser(command)._actions if a.dest == dest)
        assert action.choices is vocabulary, (command, dest, action.choices)
