"""Spec loading, validation errors and selector semantics."""

from __future__ import annotations

import pytest

from pe_probe.core.errors import UnknownNameError
from pe_probe.figures import builtin_specs_dir, load_spec, load_specs, parse_spec
from pe_probe.analysis.select import condition_holds, describe, matches, select_runs

from ..fakes import make_run, paper_runs

SHIPPED = {"ablation", "attribution", "fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "fig8", "history",
           "lape_pe_similarity", "table1", "table2", "table5", "table6",
           "attention_distance", "attention_logits", "patch_shuffle", "resolution",
           "pe_logit_share", "position_decoding", "position_variance"}


def _raw(**changes):
    raw = dict(id="x", title="X", caption="c.", kind="figure", plot="accuracy_bars", needs=["summary"],
               series=[dict(key="a", select={"layerwise": False})])
    raw.update(changes)
    return raw


def test_shipped_specs_load():
    specs = load_specs()
    assert {s.id for s in specs} == SHIPPED
    assert builtin_specs_dir().is_dir() and builtin_specs_dir().joinpath("fig1.toml").is_file()  # package data
    for s in specs:
        assert s.caption and s.title and s.kind in ("figure", "table")


def test_unknown_plot_is_unknown_name_error():
    with pytest.raises(UnknownNameError, match="plot 'nope' is unknown; valid plots: .*accuracy_bars"):
        parse_spec(_raw(plot="nope"), source="bad.toml")


def test_unknown_paper_reference():
    with pytest.raises(UnknownNameError, match="paper reference 'fig99'"):
        parse_spec(_raw(paper="fig99"))


@pytest.mark.parametrize("changes, message", [
    (dict(series=[dict(key="a", select={"pe_mod": "pvg"})]), "selector field 'pe_mod' is unknown"),
    (dict(series=[dict(key="a", select={"last_ln_pe": {"gt": 3}})]), "unknown operator"),
    (dict(series=[dict(key="a", select={"last_ln_pe": []})]), "empty list"),
    (dict(series=[dict(key="a", take="some")]), "take='some'"),
    (dict(series=[dict(key="a"), dict(key="a")]), "unique"),
    (dict(options={"colour": "red"}), "option\\(s\\) \\['colour'\\] unknown to plot 'accuracy_bars'"),
    (dict(kind="table"), "draws a figure"),
    (dict(kind="movie"), "kind='movie'"),
    (dict(needs=["weights"]), "needs \\['weights'\\]"),
    (dict(title=""), "'title' is required"),
    (dict(colour="red"), "unknown key"),
    (dict(group=dict(select={}, by=["last_ln_pe"])), "not both"),
    (dict(series=[]), "neither"),
])
def test_bad_specs_raise_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(_raw(**changes), source="bad.toml")


def test_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("id = \n")
    with pytest.raises(ValueError, match="broken.toml: not valid TOML"):
        load_spec(p)


def test_duplicate_ids(tmp_path):
    text = (builtin_specs_dir() / "fig5.toml").read_text()
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(ValueError, match="spec id 'fig5' is used by both"):
        load_specs(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_specs(tmp_path / "missing")


def test_conditions():
    assert condition_holds(None, "none") and not condition_holds(0, "none")
    assert condition_holds(0, "any") and not condition_holds(None, "any")
    assert condition_holds(5, [0, 5, 8]) and not condition_holds(3, [0, 5, 8])
    assert condition_holds(5, {"in": [5], "null": False}) and condition_holds(2, {"not_in": [5]})
    assert condition_holds("AVG", "avg")
    assert not condition_holds(True, 1) and not condition_holds(1, True)  # bools are not ints
    assert condition_holds(None, {"null": True}) and condition_holds(3, {"ne": 4})


def test_matches_flat_and_dotted_fields():
    run = make_run("r", "mpvg")
    assert matches(run, {"layerwise": True, "last_ln_pe": 0, "global_pool": "avg", "pe_mode": "mpvg"})
    assert matches(run, {"pe_config.layer0": False, "data.dataset": "digits", "summary.top1": 80.0})
    assert not matches(run, {"last_ln_pe": "none"})
    assert not matches(run, {"recipe.missing": "any"})
    assert describe({"layerwise": True, "last_ln_pe": "none", "x": [1, 2]}) == "layerwise=true, last_ln_pe=none, x=1 | 2"


def test_selection_series_and_missing():
    spec = load_spec(builtin_specs_dir() / "fig5.toml")
    sel = select_runs(spec.query, paper_runs())
    assert sel.ok and [r.name for r in sel.runs["gap"]] == ["gap"]
    assert [r.name for r in sel.runs["gap_last_ln_pe"]] == ["gap_last_ln_pe"]
    sel = select_runs(spec.query, [make_run("gap", "default", global_pool="avg")])
    assert not sel.ok and "gap_last_ln_pe" in sel.missing[0] and "last_ln_pe=0" in sel.missing[0]


def test_selection_needs_summary_and_report():
    spec = load_spec(builtin_specs_dir() / "fig7.toml")
    runs = [make_run("pvg", "pvg", report=False), make_run("mpvg", "mpvg")]
    sel = select_runs(spec.query, runs)
    assert not sel.ok and "probe report" in sel.missing[0]
    assert any("'pvg' matches series 'pvg' but has no report" in n for n in sel.notes)


def test_take_one_keeps_the_seeds_of_one_configuration_and_notes_the_others():
    spec = load_spec(builtin_specs_dir() / "fig7.toml")
    other = make_run("pvg_ls", "pvg", seed=12)
    other.config["recipe"]["label_smoothing"] = 0.2  # another configuration, same PE structure
    runs = paper_runs() + [make_run("pvg-seed2", "pvg", seed=11, train_seed=2), other]
    sel = select_runs(spec.query, runs)
    assert [r.name for r in sel.runs["pvg"]] == ["pvg", "pvg-seed2"]  # the first match's seeds
    assert any("used run 'pvg' and its 1 other seed(s); also matched 'pvg_ls'" in n for n in sel.notes)


def test_group_series_from_data():
    spec = load_spec(builtin_specs_dir() / "table5.toml")
    sel = select_runs(spec.query, paper_runs())
    assert [s.key for s in sel.series] == ["last_ln_pe=0", "last_ln_pe=2"]
    sel = select_runs(spec.query, [make_run("mpvg", "mpvg")])
    assert not sel.ok and "at least 2 different combinations of last_ln_pe (found 1)" in sel.missing[0]


def test_prefer_orders_matches():
    spec = load_spec(builtin_specs_dir() / "lape_pe_similarity.toml")
    runs = [make_run("pvg", "pvg"), make_run("lape_gap", "lape", global_pool="avg"), make_run("lape", "lape")]
    sel = select_runs(spec.query, runs)
    assert [r.name for r in sel.runs["layerwise"]] == ["lape"]
    sel = select_runs(spec.query, runs[:1])
    assert [r.name for r in sel.runs["layerwise"]] == ["pvg"]
    with pytest.raises(ValueError, match="prefer"):
        parse_spec(_raw(series=[dict(key="a", prefer={"colour": 1})]))
