"""Evaluation against the raters' ceiling: R^2, Spearman, bootstrap intervals, and k-fold cross-validation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.crossval import assign_folds
from psyattr.transfer_metrics import bootstrap_intervals, r_squared, regression_scores, spearman_r, with_ceiling
from tests.test_train import bases, small_rated  # noqa: F401  (fixtures)


def test_r_squared_and_spearman_on_known_cases():
    true = np.array([1.0, 2.0, 3.0, 4.0])
    assert r_squared(true, true) == 1.0
    assert r_squared(true, np.full(4, true.mean())) == 0.0  # the mean explains nothing
    assert r_squared(true, true[::-1]) == pytest.approx(1 - 20 / 5)  # worse than the mean: negative
    assert spearman_r(true, true ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert spearman_r(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])  # ties share their mean rank


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_faces():
    rng = np.random.default_rng(0)
    widths = []
    for count in (50, 800):
        true = rng.uniform(0, 1, count)
        predicted = true + rng.normal(0, 0.15, count)
        scores = regression_scores(true, predicted, float(true.mean()), (1, 9))
        for name in ("pearson_r", "r2", "spearman", "mae_1_9"):
            low, high = scores["ci"][name]
            assert low <= scores[name] <= high, name
        widths.append(np.diff(scores["ci"]["pearson_r"])[0])
    assert widths[1] < widths[0] / 2
    again = bootstrap_intervals(true, predicted)
    assert again == bootstrap_intervals(true, predicted)  # seeded: the same interval every time


def test_r_as_a_fraction_of_the_ceiling():
    scores = {"pearson_r": 0.6, "ci": {"pearson_r": [0.5, 0.7]}}
    rated = with_ceiling(scores, {"r": 0.8})
    assert rated["r_fraction"] == pytest.approx(0.75)
    assert rated["ci"]["r_fraction"] == pytest.approx([0.625, 0.875])
    assert with_ceiling(scores, None) is scores


def test_ceilings_come_from_omis_single_ratings_on_the_test_faces(omi_dir):
    from psyattr.ceiling import ceilings
    from psyattr.data.rated import read_omi

    ids = read_omi(omi_dir).ids[:300]
    found = ceilings({"kind": "omi", "path": str(omi_dir)}, ["happy", "attractive"], ids)
    assert set(found) == {"happy", "attractive"}
    assert found["happy"]["faces"] == 300 and found["happy"]["splits"] == 50
    # On OMI's faces people agree on happiness far more than on attractiveness (RESEARCH: 0.96 and 0.82).
    assert 0.9 < found["happy"]["r"] < 1.0 and 0.6 < found["attractive"]["r"] < 0.92
    assert found["happy"]["low"] <= found["happy"]["r"] <= found["happy"]["high"]
    assert ceilings({"kind": "csv", "path": "ratings.csv"}, ["happy"], ids) == {}


def test_folds_put_every_face_in_exactly_one():
    assignment = assign_folds(103, 10, seed=3)
    counts = np.bincount(assignment, minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert not np.array_equal(assignment, assign_folds(103, 10, seed=4))
    np.testing.assert_array_equal(assignment, assign_folds(103, 10, seed=3))


def _train_cv(out, small_rated, bases, folds, *extra):  # noqa: F811
    return CliRunner().invoke(cli, ["train", "--no-progress", "--base", str(bases["age"]), "--mode", "dense",
                                    "--attribute", "happy", "--data", f"csv:{small_rated}", "--scale", "0,100",
                                    "--out", str(out), "--epochs", "2", "--cv", str(folds), *extra])


def test_cv_that_cannot_split_the_faces_fails_before_training(tmp_path, small_rated, bases):  # noqa: F811
    too_many = _train_cv(tmp_path / "cv", small_rated, bases, 41)
    assert too_many.exit_code != 0
    assert "--cv 41 is more folds than the 40 faces" in too_many.output and "at most --cv 40" in too_many.output
    one = _train_cv(tmp_path / "cv", small_rated, bases, 1)
    assert one.exit_code != 0 and "at least 2 folds" in one.output
    assert not (tmp_path / "cv").exists()
    grid = CliRunner().invoke(cli, ["grid", "--data", f"csv:{small_rated}", "--scale", "0,100", "--out",
                                    str(tmp_path / "g"), "--bases", str(bases["age"]), "--modes", "dense",
                                    "--attributes", "happy", "--cv", "50", "--no-progress"])
    assert grid.exit_code != 0 and "--cv 50 is more folds" in grid.output


@pytest.mark.slow
def test_cv_predicts_every_face_once_by_a_model_that_never_trained_on_it(tmp_path, small_rated, bases):  # noqa: F811
    out = tmp_path / "cv"
    result = _train_cv(out, small_rated, bases, 4, "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds) == 4 and sorted(len(f) for f in folds) == [10, 10, 10, 10]
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    for k, ids in enumerate(folds):
        fold_dir = out / f"fold_{k + 1:02d}"
        split = json.loads((fold_dir / "split.json").read_text())
        assert sorted(split["test"]) == sorted(ids)
        assert not set(split["train"]) & set(ids)  # the fold's model never saw its test faces
        assert {r["id"] for r in rows if r["fold"] == str(k + 1)} == set(ids)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "4-fold CV" and metrics["test_count"] == 40
    happy = metrics["attributes"]["happy"]
    true = np.array([float(r["happy_true"]) for r in rows]) / 100
    predicted = np.array([float(r["happy_predicted"]) for r in rows]) / 100
    assert happy["mae"] == pytest.approx(np.abs(true - predicted).mean(), abs=1e-5)
    if np.isfinite(happy["pearson_r"]):
        assert happy["ci"]["pearson_r"][0] <= happy["pearson_r"] <= happy["ci"]["pearson_r"][1]
    else:  # a random base net after 2 epochs can predict one value for every face: then no r, and no interval
        assert np.ptp(predicted) == 0 and np.isnan(happy["ci"]["pearson_r"]).all()

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold_*/model.keras")}
    again = _train_cv(out, small_rated, bases, 4)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("fold_*/model.keras")} == stamps  # finished folds are kept
    other = _train_cv(out, small_rated, bases, 5)
    assert other.exit_code != 0 and "holds another run (folds differ)" in other.output

    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "age_dense_happy").symlink_to(out)
    table = CliRunner().invoke(cli, ["grid", "--data", f"csv:{small_rated}", "--out", str(grid), "--table-only"])
    assert table.exit_code == 0, table.output
    text = (grid / "table1.md").read_text()
    assert "4-fold CV: every face predicted once" in text and "| happy | age | dense |" in text
