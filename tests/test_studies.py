"""The studies on real faces: heatmaps, occlusion, expression pairs, base comparison, quality, and the report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from psyattr.data.rated import read_omi
from psyattr.models.regressor import build_attribute_regressor
from psyattr.studies.common import held_out_faces, load_study_model, load_study_models
from psyattr.studies.report import SECTIONS, find_chromium, write_report

ATTRIBUTES = ["happy", "attractive"]


@pytest.fixture(scope="module")
def omi(omi_dir):
    return read_omi(omi_dir)


@pytest.fixture(scope="module")
def study_models(tmp_path_factory, face_images):
    """Two attribute regressors on differently seeded random base nets, saved as run folders would hold them.

    The head is scaled so that scores of real faces spread around 0.5 inside [0, 1], never clipped.
    """
    from tests.test_lrp_explainer import random_net, spread_head

    models = []
    for task, seed in (("age", 11), ("gender", 12)):
        folder = tmp_path_factory.mktemp(f"{task}_run")
        regressor = build_attribute_regressor(random_net(task, seed, zero_bias=False), ATTRIBUTES,
                                              [(0, 100)] * 2, "dense", [0.5, 0.5])
        spread_head(regressor, face_images, 0.1, centre=0.5, seed=seed)
        regressor.save(folder / "model.keras")
        (folder / "config.json").write_text(json.dumps({"base": task, "mode": "dense", "seed": 0}))
        models.append(load_study_model(folder))
    return models


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("study_run")


def test_models_are_labelled_from_their_run(study_models):
    assert [m.label for m in study_models] == ["age-based, dense", "gender-based, dense"]
    assert study_models[0].attributes == ATTRIBUTES


def test_same_labelled_models_are_told_apart_and_paper_names_map_to_the_runs_columns(study_models, tmp_path):
    import shutil

    original = study_models[0].source
    other = tmp_path / "age_seed1"
    shutil.copytree(original, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "attributes": ["cheerful", "attractive"],
                                                   "columns": ATTRIBUTES}))
    models = load_study_models([original, other])
    assert [m.label for m in models] == [f"age-based, dense ({original.name})", "age-based, dense (age_seed1)"]
    assert models[1].attribute_index("cheerful") == 0 and models[1].attribute_index("happy") == 0
    with pytest.raises(ValueError, match="scores happy, attractive, not 'smiling'"):
        models[1].attribute_index("smiling")
    with pytest.raises(ValueError, match="the same model was given twice"):
        load_study_models([original, original])


@pytest.mark.slow
def test_occlusion_reports_score_changes_with_intervals(study_models, omi, run_dir):
    from psyattr.studies.occlusion import occlusion_study

    faces = held_out_faces(omi, limit=8)
    results = occlusion_study(study_models, omi, "happy", faces, run_dir / "occlusion", relevance_faces=4, examples=2)
    assert results["faces"] == 8 and results["skipped"] == []
    for model_result in results["models"].values():
        assert set(model_result["regions"]) == {"mouth", "right_eye", "both_eyes"}
        for region in model_result["regions"].values():
            low, high = region["ci95"]
            assert low <= region["mean_change"] <= high
            assert len(region["changes"]) == 8 and any(c != 0 for c in region["changes"])
            assert 0 <= region["relevance_share_before"] <= 1
    summary = json.loads((run_dir / "occlusion" / "summary.json").read_text())
    assert [f["file"] for f in summary["figures"]] == ["occlusion_changes.png", "occlusion_examples.png"]
    assert all((run_dir / "occlusion" / f["file"]).stat().st_size > 5000 for f in summary["figures"])
    assert "| age-based, dense | mouth |" in summary["table_md"]


@pytest.mark.slow
def test_expression_pairs_on_yale(study_models, yale_dir, run_dir):
    from psyattr.studies.expressions import expression_study, find_expression_pairs

    pairs = find_expression_pairs(yale_dir)
    assert len(pairs) == 14 and pairs[0][1].name == "subject01.happy.gif"
    results = expression_study(study_models, yale_dir, run_dir / "expressions", "happy", shown=2)
    assert results["pairs"] == 14
    for model_result in results["models"].values():
        for state in ("happy", "sad"):
            shares = model_result[state]["shares"]
            assert 0 < shares["mouth"] < 1 and len(model_result[state]["scores"]) == 14
    assert (run_dir / "expressions" / "expression_pairs.png").exists()


def test_expression_folder_without_pairs_is_refused(tmp_path):
    from psyattr.studies.expressions import find_expression_pairs

    (tmp_path / "subject01.happy.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="no happy/sad pairs"):
        find_expression_pairs(tmp_path)


@pytest.mark.slow
def test_base_comparison_gives_shares_spread_and_a_verdict(study_models, omi, run_dir):
    from psyattr.studies.comparison import comparison_study

    results = comparison_study(study_models, omi, "happy", held_out_faces(omi, limit=6), run_dir / "comparison")
    for model_result in results["models"].values():
        assert 0 < model_result["spread"] <= 1
        assert all(0 <= v <= 1 for v in model_result["shares"].values())
        assert model_result["shares"]["face"] >= model_result["shares"]["mouth"]
        assert model_result["mae_faces"] == results["faces"]  # no run metrics: the faces explained here
    assert "predicts the test ratings best" in results["verdict"]

    # With its run's metrics, each model is judged on its whole test half, as in Table 1.
    recorded = {0: 0.30, 1: 0.10}
    for k, entry in enumerate(study_models):
        (entry.source / "metrics.json").write_text(json.dumps(
            {"attributes": {"happy": {"mae": recorded[k], "count": 502}}}))
    try:
        results = comparison_study(study_models, omi, "happy", held_out_faces(omi, limit=6), run_dir / "comparison")
    finally:
        for entry in study_models:
            (entry.source / "metrics.json").unlink()
    assert [m["mae"] for m in results["models"].values()] == pytest.approx([30.0, 10.0])
    assert results["verdict"].startswith("The gender-based, dense model predicts the test ratings best "
                                         "(MAE 10.00 vs 30.00 on 0..100, 502 test faces)")


@pytest.mark.slow
def test_quality_and_heatmaps_then_the_report_renders_in_a_browser(study_models, omi, run_dir):
    from psyattr.studies.faithfulness import faithfulness_study
    from psyattr.studies.heatmaps import heatmap_study

    faces = held_out_faces(omi, limit=3)
    numbers = faithfulness_study(study_models[0], omi, "happy", faces, run_dir / "quality", ["epsilon", "random"],
                                 steps=3, patch=45)
    assert set(numbers) == {"epsilon", "random"}
    heatmap_study(study_models, omi, ATTRIBUTES, faces, run_dir / "heatmaps")
    assert (run_dir / "heatmaps" / "heatmaps_happy.png").exists()

    report, missing = write_report(run_dir, "study test")
    html = report.read_text()
    assert all(f'<section id="{section}">' in html for section, *_ in SECTIONS)
    assert set(missing) <= {"table1", "learning_curves", "occlusion", "expressions", "comparison"}
    assert {"table1", "learning_curves"} <= set(missing)
    assert "no table1.md" in html and "psyattr grid" in html
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the rendered page is not checked")
    from psyattr.studies.browser import check_report

    result = check_report(report, run_dir / "shot.png", height=4000)
    assert result["sections"] == [section for section, *_ in SECTIONS]
    assert set(result["missing_sections"]) == set(missing)
    assert result["shown_sections"] == [section for section, *_ in SECTIONS if section not in missing]
    assert result["images"] >= 3 and result["broken_images"] == 0
    assert result["inked_rows"] > 500


def test_report_of_an_empty_folder_says_what_is_missing(tmp_path):
    report, missing = write_report(tmp_path)
    assert missing == [section for section, *_ in SECTIONS]
    assert "psyattr study occlusion" in report.read_text()


def test_a_base_net_is_not_a_study_model(tmp_path):
    from psyattr.models import build_base_model

    build_base_model("age").save(tmp_path / "age.keras")
    with pytest.raises(ValueError, match="is not an attribute regressor"):
        load_study_model(tmp_path / "age.keras")


def test_occlusion_changes_pixels_only_near_the_region(omi):
    from psyattr.faces import regions_for_item
    from psyattr.studies.common import model_inputs
    from psyattr.studies.occlusion import occluded_versions

    images, _ = model_inputs([omi.paths[0]])
    regions = regions_for_item(omi, 0)
    covered = occluded_versions(images[0], regions)
    changed = np.any(np.abs(covered["mouth"] - images[0]) > 1, axis=-1)
    assert changed[regions["mouth"]].mean() > 0.9
    assert not changed[regions["eyes"]].any()


def test_study_quality_refuses_options_it_would_ignore(omi_dir, tmp_path):
    from click.testing import CliRunner

    from psyattr.cli import cli

    common = ["study", "quality", "--data", f"omi:{omi_dir}", "--out", str(tmp_path / "q")]
    two = CliRunner().invoke(cli, [*common, "--model", "a.keras", "--model", "b.keras"])
    assert two.exit_code == 1 and "one model at a time" in two.output
    composite = CliRunner().invoke(cli, [*common, "--model", "a.keras", "--composite", "epsilon"])
    assert composite.exit_code == 1 and "choose with --methods" in composite.output
    assert not (tmp_path / "q").exists()


def test_a_failing_browser_is_reported_and_the_written_report_kept(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from psyattr.cli import cli
    from psyattr.demo import check_in_browser

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "chromium"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    report, _ = write_report(tmp_path)
    said = []
    assert check_in_browser(report, tmp_path / "shot.png", said.append) is None
    assert said and "Chromium could not open it" in said[0] and "(3)" in said[0] and "cannot open display" in said[0]
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "--no-check skips the browser" in result.output
    assert report.exists() and "<section" in report.read_text()
