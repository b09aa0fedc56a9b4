"""The studies on real faces: heatmaps, occlusion, expression pairs, base comparison, quality, and the report."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.data.rated import read_omi
from psyattr.data.splits import half_split
from psyattr.models.regressor import build_attribute_regressor
from psyattr.runs import Run
from psyattr.studies.inputs import FramedPhotos, StudyInputs
from psyattr.studies.models import load_study_model, load_study_models
from psyattr.studies.registry import STUDIES, get_study
from psyattr.studies.report import SECTIONS, find_chromium, render_markdown, write_report

ATTRIBUTES = ["happy", "attractive"]


@pytest.fixture(scope="module")
def omi(omi_dir):
    return read_omi(omi_dir)


def regressor(task: str, seed: int, images: np.ndarray, framing: str = "utkface"):
    """An attribute regressor on a random base net, its head scaled so that scores of real faces spread around 0.5
    inside [0, 1], never clipped."""
    from tests.test_lrp_explainer import random_net, spread_head

    model = build_attribute_regressor(random_net(task, seed, zero_bias=False, framing=framing), ATTRIBUTES,
                                      [(0, 100)] * 2, "dense", [0.5, 0.5])
    return spread_head(model, images, 0.1, centre=0.5, seed=seed)


@pytest.fixture(scope="module")
def study_models(tmp_path_factory, face_images, omi):
    """Two regressors saved as run folders hold them: config, the split's ids (OMI's seed-0 halves), the model."""
    train, test = half_split(len(omi), 0)
    models = []
    for task, seed in (("age", 11), ("gender", 12)):
        folder = tmp_path_factory.mktemp(f"{task}_run")
        run = Run.start(folder, {"kind": "train", "base": task, "mode": "dense", "seed": 0}, {"kind": "train"})
        run.write_split({"train": [omi.ids[i] for i in train], "test": [omi.ids[i] for i in test]})
        regressor(task, seed, face_images).save(folder / "model.keras")
        models.append(load_study_model(folder))
    return models


@pytest.fixture(scope="module")
def inputs(study_models, omi):
    return StudyInputs.of(study_models, omi)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("study_run")


def test_models_are_labelled_from_their_run(study_models):
    assert [m.label for m in study_models] == ["age-based, dense", "gender-based, dense"]
    assert study_models[0].attributes == ATTRIBUTES
    assert study_models[0].run.path == study_models[0].source and study_models[0].framing.name == "utkface"


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


def test_runs_are_studied_on_the_faces_they_held_out(study_models, omi):
    held_out = StudyInputs.of(study_models, omi).held_out
    assert list(held_out.ids) == study_models[0].run.test_ids and held_out.note is None
    names = [m.run.name for m in study_models]
    assert held_out.first(10).describe() == (f"Test faces: the first 10 of the 502 faces that runs {names[0]} and "
                                             f"{names[1]} held out in training (their split.json).")
    assert [omi.ids[i] for i in held_out.indices] == list(held_out.ids)
    with pytest.raises(ValueError, match="trained with --seed 0, not 3"):
        StudyInputs.of(study_models, omi, seed=3)

    # Runs that held out different faces: the faces all of them held out, and the summary says so.
    narrower = Run.open(study_models[1].source)
    saved = narrower.split
    narrower.write_split({"train": saved["train"] + saved["test"][:10], "test": saved["test"][10:]})
    try:
        both = StudyInputs.of(study_models, omi).held_out  # a run's split is read when its faces are chosen
    finally:
        narrower.write_split(saved)
    assert list(both.ids) == saved["test"][10:]
    assert "held out different faces (age-based, dense: 502, gender-based, dense: 492)" in both.note
    assert "the 492 faces that all of them held out are used" in both.describe()


def test_a_model_without_a_run_uses_the_seeded_half_split_and_must_record_its_framing(tmp_path, face_images, omi):
    from psyattr.faces import FramingError
    from psyattr.models import build_base_model

    regressor("age", 3, face_images).save(tmp_path / "bare.keras")
    bare = load_study_model(tmp_path / "bare.keras")
    assert bare.run is None and bare.label == "bare" and bare.framing.name == "utkface"
    held_out = StudyInputs.of([bare], omi, seed=2).held_out
    assert list(held_out.indices) == list(half_split(len(omi), 2)[1]) and "seed 2" in held_out.source
    assert list(StudyInputs.of([bare], omi).held_out.indices) == list(half_split(len(omi), 0)[1])

    unframed = build_attribute_regressor(build_base_model("age"), ["happy"], [(0, 100)])
    unframed.save(tmp_path / "unframed.keras")
    with pytest.raises(FramingError, match="records no framing") as refused:
        load_study_model(tmp_path / "unframed.keras")
    assert "--framing utkface|omi|none" in str(refused.value)
    assert load_study_model(tmp_path / "unframed.keras", framing="omi").framing.name == "omi"


@pytest.mark.slow
def test_models_with_different_framings_each_see_their_own_framing(tmp_path, face_images, omi, monkeypatch):
    from psyattr.faces import frame_item
    from psyattr.studies import inputs as inputs_module
    from psyattr.studies.heatmaps import heatmap_study

    for name, framing in (("utk", "utkface"), ("omi", "omi")):
        regressor("age", 5, face_images, framing).save(tmp_path / f"{name}.keras")
    models = load_study_models([tmp_path / "utk.keras", tmp_path / "omi.keras"])
    assert [m.framing.name for m in models] == ["utkface", "omi"]
    framed = []
    real_frame_file = inputs_module.frame_file
    monkeypatch.setattr(inputs_module, "frame_file", lambda *args: framed.append(args[1].name) or real_frame_file(*args))
    both = StudyInputs.of(models, omi)
    result = heatmap_study(both, tmp_path / "heatmaps", limit=2)
    assert sorted(framed) == ["omi", "omi", "utkface", "utkface"]  # each face framed once per framing
    for entry in models:
        own = np.stack([frame_item(omi, i, entry.framing).model_input() for i in both.held_out.indices[:2]])
        np.testing.assert_allclose(result.attributes["happy"].models[entry.label].ratings,
                                   entry.rated_scores(own, 0), rtol=1e-5)
        assert result.attributes["happy"].models[entry.label].framing == entry.framing.name
    _, usable = both.faces(2)
    assert not np.allclose(usable.images(models[0]), usable.images(models[1]))
    assert "its own framing (utk: utkface, omi: omi)" in result.text
    heatmap_study(both, tmp_path / "again", limit=2)
    assert len(framed) == 4  # the framed inputs are kept for the next study


@pytest.mark.slow
def test_occlusion_reports_score_changes_with_intervals(inputs, run_dir):
    from psyattr.studies.occlusion import occlusion_study

    result = occlusion_study(inputs, run_dir / "occlusion", attribute="happy", limit=8, relevance_faces=4, examples=2)
    assert result.count == 8 and result.skipped == []
    assert result.ids == list(inputs.held_out.ids[:8])
    for model_result in result.models.values():
        assert set(model_result.regions) == {"mouth", "right_eye", "both_eyes"}
        for region in model_result.regions.values():
            low, high = region.ci95
            assert low <= region.mean_change <= high
            assert len(region.changes) == 8 and any(c != 0 for c in region.changes)
            assert 0 <= region.relevance_share_before <= 1
    summary = json.loads((run_dir / "occlusion" / "summary.json").read_text())
    assert summary["text"] == result.text and summary["table_md"] == result.table_markdown()
    assert summary["numbers"]["faces"] == 8 and summary["title"] == get_study("occlusion").title
    assert [f["file"] for f in summary["figures"]] == ["occlusion_changes.png", "occlusion_examples.png"]
    assert all((run_dir / "occlusion" / f["file"]).stat().st_size > 5000 for f in summary["figures"])
    assert "| age-based, dense | mouth |" in summary["table_md"]
    assert summary["numbers"]["test_faces"]["ids"] == result.ids


@pytest.mark.slow
def test_expression_pairs_on_yale(study_models, yale_dir, run_dir):
    from psyattr.studies.expressions import expression_study, find_expression_pairs

    pairs = find_expression_pairs(yale_dir)
    assert len(pairs) == 14 and pairs[0][1].name == "subject01.happy.gif"
    result = expression_study(StudyInputs(study_models), run_dir / "expressions", pairs=yale_dir, attribute="happy",
                              shown=2)
    assert result.pairs == 14 and result.skipped == []
    for model_result in result.models.values():
        for state in (model_result.happy, model_result.sad):
            assert 0 < state.shares["mouth"] < 1 and len(state.scores) == 14
        assert 0 <= model_result.happier_when_happy <= 1
    assert (run_dir / "expressions" / "expression_pairs.png").exists()
    assert "framed by the models' utkface framing" in result.text


def test_expression_folder_without_pairs_is_refused(tmp_path):
    from psyattr.studies.expressions import find_expression_pairs

    (tmp_path / "subject01.happy.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="no happy/sad pairs"):
        find_expression_pairs(tmp_path)


def test_a_photo_without_a_face_is_left_out_with_its_reason(tmp_path):
    from PIL import Image

    from psyattr.faces import get_framing

    Image.new("RGB", (120, 120), (200, 180, 160)).save(tmp_path / "blank.png")
    photos = FramedPhotos(["blank"], [tmp_path / "blank.png"])
    kept, skipped = photos.usable([get_framing("utkface")], [0])
    assert kept == [] and skipped[0].startswith("blank (no face found in") and "--framing none" in skipped[0]


@pytest.mark.slow
def test_base_comparison_gives_shares_spread_and_a_verdict(inputs, study_models, run_dir):
    from psyattr.studies.comparison import comparison_study

    result = comparison_study(inputs, run_dir / "comparison", attribute="happy", limit=6)
    for model_result in result.models.values():
        assert 0 < model_result.spread <= 1
        assert all(0 <= v <= 1 for v in model_result.shares.values())
        assert model_result.shares["face"] >= model_result.shares["mouth"]
        assert model_result.mae_faces == result.count  # no run metrics: the faces explained here
    assert "predicts the test ratings best" in result.verdict

    # With its run's metrics, each model is judged on its whole test half, as in Table 1.
    recorded = {0: 0.30, 1: 0.10}
    for k, entry in enumerate(study_models):
        (entry.source / "metrics.json").write_text(json.dumps(
            {"attributes": {"happy": {"mae": recorded[k], "count": 502}}}))
    try:
        result = comparison_study(inputs, run_dir / "comparison", attribute="happy", limit=6)
    finally:
        for entry in study_models:
            (entry.source / "metrics.json").unlink()
    assert [m.mae for m in result.models.values()] == pytest.approx([30.0, 10.0])
    assert result.verdict.startswith("The gender-based, dense model predicts the test ratings best "
                                     "(MAE 10.00 vs 30.00 on 0..100, 502 test faces)")


@pytest.mark.slow
def test_quality_and_heatmaps_then_the_report_renders_in_a_browser(inputs, study_models, run_dir):
    from psyattr.studies.heatmaps import heatmap_study
    from psyattr.studies.quality import quality_study

    quality = quality_study(inputs.with_models(study_models[:1]), run_dir / "quality", attribute="happy", limit=3,
                            methods=["epsilon", "random"], steps=3, patch=45)
    assert set(quality.perturbation.methods) == {"epsilon", "random"}
    assert quality.to_summary()["numbers"]["methods"].keys() == {"epsilon", "random"}
    heatmaps = heatmap_study(inputs, run_dir / "heatmaps", attributes=ATTRIBUTES, limit=3)
    assert (run_dir / "heatmaps" / "heatmaps_happy.png").exists()
    assert set(heatmaps.attributes) == set(ATTRIBUTES) and len(heatmaps.ids) == 3

    report, missing = write_report(run_dir, "study test")
    html = report.read_text()
    assert all(f'<section id="{section}">' in html for section, *_ in SECTIONS)
    assert set(missing) <= {"table1", "learning_curves", "occlusion", "expressions", "comparison"}
    assert {"table1", "learning_curves"} <= set(missing)
    assert "no table1.md" in html and "psyattr grid" in html
    assert 'class="num">' in html and "<th>method</th>" in html  # tables rendered, numbers right-aligned
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


def test_the_report_renders_markdown_tables_and_escapes_html():
    html = render_markdown("# Table 1: x\n\nSome <b>text</b>.\n\n| model | MAE | CI |\n|---|---:|---|\n"
                           "| age | 0.12 | [+0.1, +0.2] |\n| gender | 12.5% | - |\n")
    assert "<h3>Table 1: x</h3>" in html and "&lt;b&gt;text&lt;/b&gt;" in html
    assert '<td style="text-align:right" class="num">0.12</td>' in html
    assert "<td>[+0.1, +0.2]</td>" in html and "<td>age</td>" in html


def test_a_base_net_is_not_a_study_model(tmp_path):
    from psyattr.models import build_base_model

    build_base_model("age").save(tmp_path / "age.keras")
    with pytest.raises(ValueError, match="is not an attribute regressor"):
        load_study_model(tmp_path / "age.keras")


def test_occlusion_changes_pixels_only_near_the_region(omi):
    from psyattr.faces import get_framing
    from psyattr.studies.occlusion import occluded_versions

    photos, framing = FramedPhotos.of_rated(omi), get_framing("utkface")
    assert photos.usable([framing], [0], regions=True)[0] == [0]
    image, regions = photos.inputs(framing, [0])[0], photos.regions(framing, [0])[0]
    covered = occluded_versions(image, regions)
    changed = np.any(np.abs(covered["mouth"] - image) > 1, axis=-1)
    assert changed[regions["mouth"]].mean() > 0.9
    assert not changed[regions["eyes"]].any()


def test_the_registry_drives_the_study_commands_and_the_report(tmp_path, monkeypatch):
    import dataclasses

    group = cli.commands["study"]
    assert sorted(group.commands) == sorted(study.command for study in STUDIES)
    for study in STUDIES:
        command = group.commands[study.command]
        options = {option for param in command.params for option in param.opts}
        assert command.help == study.help
        assert ("--data" in options) == study.rated_faces and ("--seed" in options) == study.rated_faces
    assert "--pairs" in {o for p in group.commands["expressions"].params for o in p.opts}
    assert [s.id for s in SECTIONS] == ["table1", "learning_curves", *(study.name for study in STUDIES)]
    assert SECTIONS[-1].command == "psyattr study quality --out RUN/quality"

    # The command runs whatever the registry names as the study's runner.
    regressor("age", 1, np.random.default_rng(0).uniform(0, 255, (4, 227, 227, 3))).save(tmp_path / "m.keras")
    (tmp_path / "pairs").mkdir()
    ran = []

    class Done:
        def lines(self):
            return ["the registered runner ran"]

    def runner(inputs, out_dir, **options):
        ran.append((inputs.models[0].label, out_dir, options))
        return Done()

    monkeypatch.setattr("tests.test_studies.fake_runner", runner, raising=False)
    replaced = tuple(dataclasses.replace(s, runner="tests.test_studies:fake_runner") if s.name == "expressions" else s
                     for s in STUDIES)
    monkeypatch.setattr("psyattr.studies.registry.STUDIES", replaced)
    assert get_study("expressions").runner == "tests.test_studies:fake_runner"
    result = CliRunner().invoke(cli, ["study", "expressions", "--model", str(tmp_path / "m.keras"), "--pairs",
                                      str(tmp_path / "pairs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "the registered runner ran" in result.output
    assert ran == [("m", tmp_path / "out", {"attribute": "happy", "composite": "alpha2beta1",
                                            "pairs": tmp_path / "pairs"})]


@pytest.fixture(scope="module")
def small_rated(tmp_path_factory, omi):
    """A generic CSV naming 40 real OMI faces with their happy ratings (0..100)."""
    folder = tmp_path_factory.mktemp("rated")
    with open(folder / "ratings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "happy"])
        for i in range(40):
            writer.writerow([str(omi.paths[i]), omi.ratings["happy"][i]])
    return folder / "ratings.csv"


@pytest.mark.slow
def test_a_run_is_studied_on_its_own_test_faces_and_another_seed_is_refused(tmp_path, small_rated):
    from tests.test_lrp_explainer import random_net

    random_net("age", 5, zero_bias=False).save(tmp_path / "age.keras")
    run = tmp_path / "run"
    data = ["--data", f"csv:{small_rated}", "--scale", "0,100"]
    trained = CliRunner().invoke(cli, ["train", "--no-progress", "--base", str(tmp_path / "age.keras"), "--mode",
                                       "dense", "--attribute", "happy", *data, "--out", str(run), "--epochs", "1",
                                       "--seed", "1", "--cache-dir", str(tmp_path / "cache")])
    assert trained.exit_code == 0, trained.output
    test_ids = json.loads((run / "split.json").read_text())["test"]
    ids = read_csv_ids(small_rated)
    # Seed 1 holds out other faces than the default seed 0 would: studying the run with seed 0 would be wrong.
    assert test_ids and set(test_ids) != {ids[i] for i in half_split(len(ids), 0)[1]}

    studied = CliRunner().invoke(cli, ["study", "heatmaps", "--model", str(run), *data, "--limit", "40",
                                       "--out", str(tmp_path / "heatmaps")])
    assert studied.exit_code == 0, studied.output
    numbers = json.loads((tmp_path / "heatmaps" / "summary.json").read_text())["numbers"]
    assert numbers["test_faces"]["ids"] == test_ids and numbers["shown"] == test_ids
    assert numbers["test_faces"]["source"] == f"faces that run {run.name} held out in training (its split.json)"

    refused = CliRunner().invoke(cli, ["study", "occlusion", "--model", str(run), *data, "--seed", "0",
                                       "--out", str(tmp_path / "occlusion")])
    assert refused.exit_code == 1
    assert "trained with --seed 1, not 0" in refused.output and "give --seed 1" in refused.output
    assert not (tmp_path / "occlusion").exists()


def read_csv_ids(path) -> list[str]:
    with open(path, newline="") as handle:
        return [row["image"] for row in csv.DictReader(handle)]


def test_study_quality_refuses_options_it_would_ignore(omi_dir, tmp_path):
    common = ["study", "quality", "--data", f"omi:{omi_dir}", "--out", str(tmp_path / "q")]
    two = CliRunner().invoke(cli, [*common, "--model", "a.keras", "--model", "b.keras"])
    assert two.exit_code == 1 and "one model at a time" in two.output
    composite = CliRunner().invoke(cli, [*common, "--model", "a.keras", "--composite", "epsilon"])
    assert composite.exit_code == 1 and "choose with --methods" in composite.output
    assert not (tmp_path / "q").exists()


def test_a_failing_browser_is_reported_and_the_written_report_kept(tmp_path, monkeypatch):
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
