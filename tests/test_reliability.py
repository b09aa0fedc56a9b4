"""Split-half reliability of single ratings: known answers on synthetic panels, bad input, the command, OMI."""

from __future__ import annotations

import csv
import json
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.data.rated import RatingsError
from psyattr.data.trials import build_trial_ratings, read_omi_trials, read_trials, read_trials_csv
from psyattr.reliability import spearman_brown, split_half_ceiling, split_half_reliability, write_reliability


def panel_columns(faces: int, per_face: int, noise: float, seed: int = 0, raters: np.ndarray | None = None,
                  rater_noise: np.ndarray | None = None, attribute: str = "happy") -> dict[str, list[str]]:
    """Ratings t_i + e of `faces` faces, `per_face` each; `rater_noise[i, j]` is added to every rating of rater j of face i."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, faces)
    face = np.repeat(np.arange(faces), per_face)
    rating = truth[face] + rng.normal(0, noise, len(face))
    columns = {"image": [f"f{i}" for i in face], "attribute": [attribute] * len(face)}
    if raters is not None:
        columns["rater"] = [f"r{j}" for j in raters]
        rating = rating + rater_noise[face, raters]
    columns["rating"] = [str(float(v)) for v in rating]
    return columns


def panel(*args, **kwargs):
    """A synthetic panel (see panel_columns) as TrialRatings."""
    columns = panel_columns(*args, **kwargs)
    return build_trial_ratings("panel", columns, np.arange(len(columns["rating"])) + 2, (-100.0, 100.0))


def test_split_half_r_of_a_panel_matches_the_analytic_value():
    # Halves of k/2 ratings: r = var(t) / (var(t) + var(e) / (k/2)); the full panel has k ratings.
    faces, noise = 5000, 2.0
    for per_face in (20, 21):  # an odd count sets one rating aside per split, so halves stay of 10
        row = split_half_reliability(panel(faces, per_face, noise), splits=20)["happy"]
        expected = 1 / (1 + noise**2 / 10)
        assert row.r == pytest.approx(expected, abs=0.02)
        assert row.faces == faces and row.median_ratings == per_face and row.median_raters is None and row.unit == "rating"
        assert row.low <= row.r <= row.high and row.high - row.low < 0.03
        assert row.spearman_brown == pytest.approx(spearman_brown(row.r))
    assert split_half_reliability(panel(faces, 20, noise), splits=20)["happy"].spearman_brown == pytest.approx(
        1 / (1 + noise**2 / 20), abs=0.02)


def test_splits_are_seeded_and_do_not_depend_on_the_other_attributes():
    happy, smart = panel_columns(300, 10, 1.0), panel_columns(300, 10, 1.0, seed=1, attribute="smart")
    both = build_trial_ratings("two", {k: happy[k] + smart[k] for k in happy}, np.arange(6000) + 2, (-100.0, 100.0))
    alone = split_half_reliability(both, ["happy"], seed=3)["happy"]
    assert split_half_reliability(both, seed=3)["happy"] == alone
    assert split_half_reliability(both, ["happy"], seed=4)["happy"].r != alone.r
    assert split_half_ceiling(both, "happy", seed=3) == alone.r


def test_raters_are_split_whole_so_their_shared_error_stays_in_one_half():
    # 8 raters per face, each rating it 3 times with an error of their own on that face (sd 2) and trial noise
    # (sd 1). Split by rater, a half's mean holds 4 raters' shared errors: r = 1 / (1 + (4 + 1/3) / 4).
    # Split by trial, each rater's error falls in both halves and r comes out higher.
    faces, raters_per_face, repeats = 3000, 8, 3
    rng = np.random.default_rng(1)
    raters = np.tile(np.repeat(np.arange(raters_per_face), repeats), faces)
    shared = rng.normal(0, 2.0, (faces, raters_per_face))
    columns = panel_columns(faces, raters_per_face * repeats, 1.0, raters=raters, rater_noise=shared)
    lines = np.arange(len(raters)) + 2
    row = split_half_reliability(build_trial_ratings("grouped", columns, lines, (-100.0, 100.0)), splits=20)["happy"]
    assert row.unit == "rater" and row.median_raters == raters_per_face and row.median_ratings == 24
    assert row.r == pytest.approx(1 / (1 + (4 + 1 / 3) / 4), abs=0.02)
    del columns["rater"]
    pooled = split_half_reliability(build_trial_ratings("pooled", columns, lines, (-100.0, 100.0)), splits=20)["happy"]
    assert pooled.unit == "rating" and pooled.r > row.r + 0.1


def test_rater_ids_are_kept_per_rating():
    trials = build_trial_ratings("t", {"image": ["a", "a", "b"], "attribute": ["x", "x", "x"], "rating": ["1", "2", "3"],
                                       "rater": ["p", "q", "p"]}, np.array([2, 3, 4]), (0.0, 9.0))
    assert trials.has_raters and trials.rater_ids("a", "x") == ["p", "q"]
    np.testing.assert_array_equal(trials.ratings("a", "x"), [1.0, 2.0])
    assert trials.ratings("zz", "x").size == 0


def write_csv(path, rows, header=("image", "attribute", "rating", "rater")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good_rows(faces=6, per_face=6, with_rater=True):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(faces):
        for j in range(per_face):
            rating = f"{min(9, max(1, i + 2 + rng.normal(0, 0.5))):.2f}"
            rows.append([f"face{i}.jpg", "happy", rating] + ([f"rater{j}"] if with_rater else []))
    return rows


def test_bad_ratings_are_left_out_with_line_numbers_and_the_rest_is_used(tmp_path):
    rows = good_rows()
    rows[0][2] = "abc"
    rows[1][2] = "12"
    rows[2][2] = ""
    trials = read_trials_csv(write_csv(tmp_path / "r.csv", rows), (1, 9))
    assert trials.problems == ["3 non-numeric or out-of-scale rating(s) (scale 1..9) are left out "
                               "(line 2: 'abc', line 3: '12', line 4: '')"]
    assert len(trials) == 33
    table = split_half_reliability(trials)
    assert table["happy"].faces == 5 and table["happy"].left_out == 1
    assert table.problems[-1] == "happy: 1 face(s) with fewer than 4 raters are left out of its reliability (face0.jpg)"


def test_faces_outside_the_rated_set_are_named_and_left_out(tmp_path):
    trials = read_trials_csv(write_csv(tmp_path / "r.csv", good_rows()), (1, 9), known=[f"face{i}.jpg" for i in range(4)])
    assert trials.problems == ["12 rating(s) of 2 face(s) not in the rated set are left out (face4.jpg, face5.jpg)"]
    assert split_half_reliability(trials)["happy"].faces == 4


def test_faces_with_too_few_ratings_are_counted_and_an_attribute_without_faces_is_named(tmp_path):
    rows = good_rows(with_rater=False) + [[f"face{i}.jpg", "smart", "5"] for i in range(6) for _ in range(3)]
    table = split_half_reliability(read_trials_csv(write_csv(tmp_path / "r.csv", rows, header=("image", "attribute", "rating")),
                                                   (1, 9)))
    assert [r.attribute for r in table.rows] == ["happy"]
    assert "smart: 6 face(s) with fewer than 4 ratings are left out of its reliability (face0.jpg, face1.jpg, face2.jpg, " \
           "face3.jpg, face4.jpg, ...)" in table.problems
    assert ("smart: only 0 face(s) have 4 or more ratings; a correlation over faces needs at least 3, "
            "so it has no reliability") in table.problems
    with pytest.raises(RatingsError, match=r"no attribute has a reliability .*smart: only 0 face"):
        split_half_reliability(read_trials_csv(tmp_path / "r.csv", (1, 9)), ["smart"])
    with pytest.raises(RatingsError, match=r"r\.csv: no ceiling for 'smart' \(smart: 6 face\(s\) with fewer than 4"):
        split_half_ceiling(read_trials_csv(tmp_path / "r.csv", (1, 9)), "smart")


def test_a_missing_rater_column_falls_back_to_splitting_ratings(tmp_path):
    path = write_csv(tmp_path / "r.csv", good_rows(with_rater=False), header=("image", "attribute", "rating"))
    trials = read_trials_csv(path, (1, 9))
    assert not trials.has_raters
    assert trials.problems == ["no 'rater' column: each face's ratings are split as if every rating came from another rater"]
    assert split_half_reliability(trials)["happy"].unit == "rating"


def test_a_rating_without_a_rater_id_is_a_rater_of_its_own(tmp_path):
    rows = good_rows()
    rows[3][3] = ""
    trials = read_trials_csv(write_csv(tmp_path / "r.csv", rows), (1, 9))
    assert trials.problems == ["1 rating(s) have no rater id and each counts as a rater of its own (lines 5)"]
    assert trials.rater_ids("face0.jpg", "happy")[3] == "(line 5)"


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_ragged_rows_are_named_by_line(tmp_path, quoted):
    rows = good_rows()
    rows[4] = rows[4][:2]
    rows[7] = rows[7] + ["extra"]
    if quoted:
        rows[0][0] = "face0.jpg"  # a quoted cell takes the csv-module path
        rows[0][1] = 'hap"py'
    path = write_csv(tmp_path / "r.csv", rows)
    text = path.read_text()
    path.write_text(text.replace("\r\n", "\n") + "\n\n")  # blank lines are not rows
    trials = read_trials_csv(path, (1, 9))
    assert trials.problems[0] == "2 row(s) do not have the header's 4 fields and are left out (lines 6, 9)"
    assert len(trials) == 34


def test_missing_columns_and_unusable_files_raise_with_the_file_named(tmp_path):
    path = write_csv(tmp_path / "r.csv", [["a", "5"]], header=("image", "score"))
    with pytest.raises(RatingsError, match=r"r\.csv has no column 'attribute', 'rating' \(columns: image, score\); "
                                           r"the file needs one row per rating"):
        read_trials_csv(path, (1, 9))
    path = write_csv(tmp_path / "bad.csv", [["a", "happy", "x"], ["b", "happy", "99"]], header=("image", "attribute", "rating"))
    with pytest.raises(RatingsError, match=r"bad\.csv: no usable rating is left \(.*2 non-numeric or out-of-scale"):
        read_trials_csv(path, (1, 9))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RatingsError, match=r"empty\.csv has no column 'image', 'attribute', 'rating' \(columns: none\)"):
        read_trials_csv(tmp_path / "empty.csv", (1, 9))
    with pytest.raises(RatingsError, match=r"needs its rating scale"):
        read_trials("csv", path)
    with pytest.raises(RatingsError, match=r"scale must have low < high"):
        read_trials_csv(path, (9, 1))


def write_omi_zip(path, rows, member="attribute_ratings.csv", header="rating,attribute,rating_type,stimulus"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_omi_zip_keeps_normal_trials_and_checks_its_layout(tmp_path):
    rows = [(10 * s + i, "happy", "normal", s) for s in range(1, 6) for i in range(4)]
    rows += [(50, "happy", "repeat", 1), (50, "happy", "fill-in", 2), (101, "happy", "normal", 3)]
    write_omi_zip(tmp_path / "attribute_ratings.zip", rows)
    trials = read_omi_trials(tmp_path, known=["1", "2", "3", "4"])
    assert trials.notes[0] == "21 normal trials kept of 23 (1 fill-in, 1 repeat left out)"
    assert trials.problems == ["1 non-numeric or out-of-scale rating(s) (scale 0..100) are left out (line 24: '101')",
                               "4 rating(s) of 1 face(s) not in the rated set are left out (5)"]
    assert trials.stimuli == ["1", "2", "3", "4"] and trials.resolve("Happy") == "happy"
    write_omi_zip(tmp_path / "other.zip", rows, member="ratings.txt")
    with pytest.raises(RatingsError, match=r"other\.zip holds no attribute_ratings\.csv \(it holds: ratings\.txt\)"):
        read_omi_trials(tmp_path / "other.zip")
    write_omi_zip(tmp_path / "cols.zip", rows, header="rating,attribute,kind,stimulus")
    with pytest.raises(RatingsError, match=r"cols\.zip has no column 'rating_type'.*pass OMI's unchanged attribute_ratings\.zip"):
        read_omi_trials(tmp_path / "cols.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RatingsError, match=r"no attribute_ratings\.zip in .*empty: pass the OMI folder or the zip itself"):
        read_omi_trials(tmp_path / "empty")


def test_the_command_prints_the_table_and_writes_csv_and_json(tmp_path):
    ratings = write_csv(tmp_path / "r.csv", good_rows(faces=8) + [["face0.jpg", "happy", "abc", "rater9"]])
    runner = CliRunner()
    for name in ("table.csv", "table.json"):
        result = runner.invoke(cli, ["data", "reliability", "--ratings", f"csv:{ratings}", "--scale", "1,9",
                                     "--splits", "10", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        header, row = result.output.splitlines()[:2]
        assert [h.strip() for h in header.split("  ") if h] == ["attribute", "faces", "ratings/face", "split-half r",
                                                                 "95 % interval", "Spearman-Brown"]
        assert row.split()[:4] == ["happy", "8", "6", "(6"] and row.split()[7] == ".."
        assert "problem: 1 non-numeric or out-of-scale rating(s) (scale 1..9) are left out (line 50: 'abc')" in result.output
    with open(tmp_path / "table.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [w["attribute"] for w in written] == ["happy"] and written[0]["unit"] == "rater" and written[0]["splits"] == "10"
    report = json.loads((tmp_path / "table.json").read_text())
    assert report["rows"][0]["faces"] == 8 and report["rows"][0]["r"] == pytest.approx(float(written[0]["r"]))
    assert report["problems"] == ["1 non-numeric or out-of-scale rating(s) (scale 1..9) are left out (line 50: 'abc')"]


def test_the_command_refuses_bad_options_clearly(tmp_path):
    ratings = write_csv(tmp_path / "r.csv", good_rows())
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"csv:{ratings}"])
    assert result.exit_code == 1 and "a ratings CSV needs its rating scale (e.g. --scale 1,9)" in result.output
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"csv:{ratings}", "--scale", "1,9", "--out", "x.txt"])
    assert result.exit_code == 1 and "--out must end in .csv or .json, got x.txt" in result.output
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"csv:{ratings}", "--scale", "1,9", "--attribute", "sad"])
    assert result.exit_code == 1 and "r.csv has no ratings of 'sad'; it has: happy" in result.output
    result = runner.invoke(cli, ["data", "reliability", "--ratings", "xls:foo"])
    assert result.exit_code == 2 and "'xls:foo' is not FORMAT:PATH with FORMAT one of omi, csv" in result.output


def test_write_reliability_refuses_other_suffixes(tmp_path):
    table = split_half_reliability(panel(50, 8, 1.0), splits=5)
    with pytest.raises(ValueError, match=r"must end in \.csv or \.json"):
        write_reliability(table, tmp_path / "t.xlsx")


@pytest.mark.slow
def test_omi_agreement_matches_the_verified_values(omi_dir):
    zip_path = omi_dir / "attribute_ratings.zip"
    if not zip_path.is_file():
        pytest.skip(f"{zip_path} is missing: the test needs OMI's trial-level ratings")
    from psyattr.data.trials import omi_known_ids

    start = time.perf_counter()
    trials = read_omi_trials(zip_path, omi_known_ids(omi_dir))
    table = split_half_reliability(trials, ["happy", "attractive"])
    assert time.perf_counter() - start < 60
    assert table["happy"].r == pytest.approx(0.961, abs=0.01) and table["attractive"].r == pytest.approx(0.823, abs=0.01)
    assert table["happy"].faces == 1004 and table["happy"].median_ratings == 30
    assert table["attractive"].spearman_brown == pytest.approx(0.903, abs=0.01)
    assert split_half_ceiling(trials, "happy") == table["happy"].r


def test_the_command_on_an_omi_folder_keeps_the_faces_of_attribute_means(tmp_path):
    rows = [(10 * s + i, "happy", "normal", s) for s in range(1, 7) for i in range(4)]
    write_omi_zip(tmp_path / "attribute_ratings.zip", rows)
    (tmp_path / "attribute_means.csv").write_text("stimulus,happy\n" + "".join(f"{s},50\n" for s in range(1, 6)))
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"omi:{tmp_path}", "--splits", "5"])
    assert result.exit_code == 0, result.output
    assert "note: faces kept: the 5 of attribute_means.csv" in result.output
    assert "note: OMI has no rater ids: each face's trials are split, not its raters" in result.output
    assert "problem: 4 rating(s) of 1 face(s) not in the rated set are left out (6)" in result.output
    assert result.output.splitlines()[1].split()[:2] == ["happy", "5"]
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"omi:{tmp_path}", "--splits", "5", "--all-faces"])
    assert result.exit_code == 0 and "problem:" not in result.output
    assert result.output.splitlines()[1].split()[:2] == ["happy", "6"]
    result = runner.invoke(cli, ["data", "reliability", "--ratings", f"omi:{tmp_path}", "--all-faces",
                                 "--faces", str(tmp_path / "attribute_means.csv")])
    assert result.exit_code == 1 and "--faces and --all-faces contradict each other" in result.output
