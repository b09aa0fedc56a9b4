"""Fine-tuning to ratings: dense and full mode, resume, the grid's Table 1 and Fig. 3, evaluate."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.data.rated import read_omi


@pytest.fixture(scope="module")
def small_rated(tmp_path_factory, omi_dir):
    """A generic CSV naming 40 real OMI faces with their happy and attractive ratings (0..100)."""
    folder = tmp_path_factory.mktemp("rated")
    omi = read_omi(omi_dir)
    with open(folder / "ratings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "happy", "attractive"])
        for i in range(40):
            writer.writerow([str(omi.paths[i]), omi.ratings["happy"][i], omi.ratings["attractive"][i]])
    return folder / "ratings.csv"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from tests.test_lrp_explainer import random_net

    folder = tmp_path_factory.mktemp("bases")
    paths = {}
    for task, seed in (("age", 5), ("gender", 6)):
        paths[task] = folder / f"{task}.keras"
        random_net(task, seed, zero_bias=False).save(paths[task])
    return paths


def train(args):
    result = CliRunner().invoke(cli, ["train", "--no-progress", *map(str, args)])
    return result


@pytest.mark.slow
def test_dense_mode_trains_only_the_dense_layers_and_resumes(tmp_path, small_rated, bases):
    run = tmp_path / "run"
    common = ["--base", bases["age"], "--mode", "dense", "--attribute", "happy", "--data", f"csv:{small_rated}",
              "--scale", "0,100", "--out", run, "--cache-dir", tmp_path / "cache"]
    result = train([*common, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert (run / "model.keras").exists()
    assert len(list((tmp_path / "cache").glob("features_*.npz"))) == 1  # frozen features, computed once
    history = json.loads((run / "state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all("train_mae" in h and "test_mae" in h for h in history)
    metrics = json.loads((run / "metrics.json").read_text())["attributes"]["happy"]
    assert metrics["count"] == 20 and metrics["mae_native"] == pytest.approx(metrics["mae"] * 100)
    assert metrics["mae_1_9"] == pytest.approx(metrics["mae"] * 8)
    with open(run / "predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 20

    model, base = keras.models.load_model(run / "model.keras"), keras.models.load_model(bases["age"])
    for name in ("conv1", "conv2", "conv3"):
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], base.get_layer(name).get_weights()[0])
    assert not np.array_equal(model.get_layer("fc6").get_weights()[0], base.get_layer("fc6").get_weights()[0])
    x = np.random.default_rng(0).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
    scores = model.predict(x, verbose=0)
    assert scores.shape == (2, 1) and (scores >= 0).all() and (scores <= 1).all()

    again = train([*common, "--epochs", "3"])
    assert again.exit_code != 0 and "pass --resume" in again.output
    resumed = train([*common, "--epochs", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in json.loads((run / "state.json").read_text())["history"]] == [1, 2, 3]

    other_seed = train([*common, "--epochs", "4", "--resume", "--seed", "1"])
    # Another split would turn training faces into test faces: refused, naming both seeds.
    assert other_seed.exit_code != 0 and "seed 0" in other_seed.output and "seed 1" in other_seed.output

    saved_text = (run / "metrics.json").read_text()
    saved = json.loads(saved_text)["attributes"]["happy"]
    evaluated = CliRunner().invoke(cli, ["evaluate", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    rescored = json.loads(evaluated.stdout)["happy"]
    assert rescored["mae"] == pytest.approx(saved["mae"], rel=1e-5)
    assert rescored["count"] == saved["count"] == 20

    # Scores on other data go beside the run's own results, which stay as they were.
    elsewhere = CliRunner().invoke(cli, ["evaluate", str(run), "--data", f"csv:{small_rated}", "--scale", "0,100"])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert (run / "metrics.json").read_text() == saved_text
    written = json.loads(next((run / "evaluations").glob("*/metrics.json")).read_text())["attributes"]["happy"]
    assert written["mae"] == pytest.approx(saved["mae"], rel=1e-5)
    nothing_valid = CliRunner().invoke(cli, ["evaluate", str(run), "--data", f"csv:{small_rated}", "--scale", "0,10"])
    assert nothing_valid.exit_code == 1 and "no valid ratings of happy in the test faces" in nothing_valid.output


@pytest.mark.slow
def test_grid_writes_table1_and_learning_curves(tmp_path, small_rated, bases):
    out = tmp_path / "grid"
    result = CliRunner().invoke(cli, [
        "grid", "--data", f"csv:{small_rated}", "--scale", "0,100", "--out", str(out),
        "--bases", f"{bases['age']},{bases['gender']}", "--modes", "dense,full", "--attributes", "happy",
        "--epochs-dense", "2", "--epochs-full", "3", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert result.exit_code == 0, result.output
    table = (out / "table1.md").read_text()
    assert table.count("| happy |") == 4
    for base in ("age", "gender"):
        for mode in ("dense", "full"):
            assert f"| happy | {base} | {mode} |" in table
    with open(out / "table1.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["mode"] for r in rows} == {"dense", "full"} and all(float(r["baseline_mae_1_9"]) > 0 for r in rows)
    assert (out / "fig3_learning_curves.png").stat().st_size > 5000
    full = keras.models.load_model(out / "age_full_happy" / "model.keras")
    base = keras.models.load_model(bases["age"])
    assert not np.array_equal(full.get_layer("conv1").get_weights()[0], base.get_layer("conv1").get_weights()[0])

    saved = {p: p.stat().st_mtime_ns for p in out.glob("*/model.keras")}
    assert len(saved) == 4
    again = ["grid", "--data", f"csv:{small_rated}", "--scale", "0,100", "--out", str(out), "--bases",
             f"{bases['age']},{bases['gender']}", "--modes", "dense,full", "--attributes", "happy", "--epochs-dense",
             "2", "--epochs-full", "3", "--no-progress"]
    rerun = CliRunner().invoke(cli, again)
    assert rerun.exit_code == 0 and "| happy | age | dense |" in rerun.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.keras")} == saved  # finished runs are not retrained
    other_seed = CliRunner().invoke(cli, [*again, "--seed", "1"])
    assert other_seed.exit_code != 0 and "seed 0, not 1" in other_seed.output


@pytest.mark.slow
def test_ridge_mode_solves_a_linear_head_on_pool5_and_a_grid_of_it_keeps_finished_runs(tmp_path, small_rated, bases):
    run = tmp_path / "run"
    common = ["--base", bases["age"], "--mode", "ridge", "--attribute", "happy", "--attribute", "attractive",
              "--data", f"csv:{small_rated}", "--scale", "0,100", "--cache-dir", tmp_path / "cache"]
    result = train([*common, "--out", run])
    assert result.exit_code == 0, result.output
    penalties = json.loads((run / "ridge.json").read_text())
    assert set(penalties) == {"happy", "attractive"} and all(v["penalty"] > 0 for v in penalties.values())
    model = keras.models.load_model(run / "model.keras")
    assert "root" in {layer.name for layer in model.layers} and "fc6" not in {layer.name for layer in model.layers}
    metrics = json.loads((run / "metrics.json").read_text())["attributes"]
    assert metrics["happy"]["count"] == 20 and np.isfinite(metrics["happy"]["pearson_r"])
    saved = (run / "model.keras").stat().st_mtime_ns
    again = train([*common, "--out", run])
    assert again.exit_code != 0 and "already holds this finished ridge run" in again.output
    assert (run / "model.keras").stat().st_mtime_ns == saved
    epochs = train([*common, "--out", tmp_path / "other", "--epochs", "3"])
    assert epochs.exit_code != 0 and "--epochs" in epochs.output and not (tmp_path / "other").exists()

    out = tmp_path / "grid"
    grid = ["grid", "--data", f"csv:{small_rated}", "--scale", "0,100", "--out", str(out), "--bases",
            f"{bases['age']},{bases['gender']}", "--modes", "ridge", "--attributes", "happy", "--cache-dir",
            str(tmp_path / "cache"), "--no-progress"]
    first = CliRunner().invoke(cli, grid)
    assert first.exit_code == 0, first.output
    assert "| happy | age | ridge |" in first.output and "| happy | gender | ridge |" in first.output
    solved = {p: p.stat().st_mtime_ns for p in out.glob("*/model.keras")}
    assert len(solved) == 2
    rerun = CliRunner().invoke(cli, grid)
    assert rerun.exit_code == 0, rerun.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.keras")} == solved


def test_unknown_attribute_stops_before_training_and_lists_the_columns(tmp_path, small_rated, bases):
    result = train(["--base", bases["age"], "--mode", "dense", "--attribute", "sleepy", "--data",
                    f"csv:{small_rated}", "--scale", "0,100", "--out", tmp_path / "run"])
    assert result.exit_code != 0
    assert "has no attribute 'sleepy'; it has: happy, attractive" in result.output
    assert not (tmp_path / "run" / "state.json").exists()


def test_fig3_names_each_attributes_own_stand_in_for_joint_and_single_runs(tmp_path):
    from psyattr.grid import fig3_panels
    from psyattr.runs import Run

    def run_folder(name, config, history):
        run = Run.start(tmp_path / name, config, {"kind": "train"})
        (run.path / "state.json").write_text(json.dumps({"identity": {}, "epoch": 3, "checkpoint": "x",
                                                          "history": history}))
        return run

    def history(columns, train, test):
        suffixes = [f"_{c}" for c in columns] if len(columns) > 1 else [""]
        return [{"epoch": e + 1, **{f"train_mae{s}": train + k / 100 - e / 100 for k, s in enumerate(suffixes)},
                 **{f"test_mae{s}": test + k / 100 for k, s in enumerate(suffixes)}} for e in range(3)]

    paper, columns = ["attractive", "happy", "confident", "intelligent"], ["attractive", "happy", "dominant", "smart"]
    joint = run_folder("joint", {"base": "age", "mode": "dense", "attributes": paper, "columns": columns},
                       history(columns, 0.10, 0.20))
    single = run_folder("single", {"base": "gender", "mode": "full", "attributes": ["confident"],
                                   "columns": ["dominant"]}, history(["dominant"], 0.30, 0.40))
    panels = fig3_panels([single, joint])
    assert list(panels) == ["attractive", "happy", "confident (dominant stands in)", "intelligent (smart stands in)"]
    confident = dict((label, (train, test)) for label, _, train, test in panels["confident (dominant stands in)"])
    assert list(confident) == ["age-based, dense", "gender-based, full"]
    # The joint run's third column is 'dominant': its curve, on the 1..9 scale.
    assert confident["age-based, dense"][0] == pytest.approx([8 * (0.12 - e / 100) for e in range(3)])
    assert confident["gender-based, full"][1] == pytest.approx([8 * 0.40] * 3)
    assert [label for label, *_ in panels["happy"]] == ["age-based, dense"]


def test_train_refuses_what_is_not_its_run_and_writes_nothing_before_the_data_holds(tmp_path, small_rated, bases,
                                                                                    caplog):
    common = ["--base", bases["age"], "--mode", "dense", "--attribute", "happy", "--scale", "0,100", "--epochs", "1",
              "--cache-dir", tmp_path / "cache"]
    # A folder that is not a run is never written into.
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "model.keras").write_text("precious")
    refused = train([*common, "--data", f"csv:{small_rated}", "--out", existing])
    assert refused.exit_code == 1 and "is not empty and holds no psyattr run (it has model.keras)" in refused.output
    assert (existing / "model.keras").read_text() == "precious" and len(list(existing.iterdir())) == 1

    # Resuming with other data (the same faces with one rating changed) is refused, naming both.
    run = tmp_path / "run"
    assert train([*common, "--data", f"csv:{small_rated}", "--out", run]).exit_code == 0
    rows = small_rated.read_text().splitlines()
    rows[1] = rows[1].rsplit(",", 2)[0] + ",12.5," + rows[1].rsplit(",", 1)[1]
    other = tmp_path / "other.csv"
    other.write_text("\n".join(rows) + "\n")
    config = (run / "config.json").read_text()
    resumed = train([*common, "--data", f"csv:{other}", "--out", run, "--resume", "--epochs", "2"])
    assert resumed.exit_code == 1 and "cannot resume" in resumed.output and "fingerprint" in resumed.output
    assert str(small_rated) in resumed.output and str(other) in resumed.output
    assert (run / "config.json").read_text() == config

    # A short row is named by its line; data that leaves too few faces writes no run folder at all.
    short = tmp_path / "short.csv"
    short.write_text("happy,image\n5\n" + "".join(f"50,{row.split(',')[0]}\n" for row in rows[1:2]))
    result = train([*common, "--data", f"csv:{short}", "--out", tmp_path / "short"])
    # The warnings go to the log (the terminal's stderr), the error to the command's output.
    assert result.exit_code == 1 and "too few usable faces" in result.output and "line 2 (1 fields)" in caplog.text
    assert not (tmp_path / "short").exists()
    out_of_scale = tmp_path / "scale.csv"
    out_of_scale.write_text("image,happy\n" + "".join(f"{row.split(',')[0]},555\n" for row in rows[1:]))
    result = train([*common, "--data", f"csv:{out_of_scale}", "--out", tmp_path / "scale"])
    assert result.exit_code == 1 and "out-of-scale" in caplog.text and not (tmp_path / "scale").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(6):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg")
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text("image,happy\n" + "".join(f"{broken / f'{i}.jpg'},50\n" for i in range(6)))
    result = train([*common, "--data", f"csv:{corrupt}", "--out", tmp_path / "corrupt"])
    assert result.exit_code == 1 and "0.jpg: cannot decode image" in caplog.text and "cannot identify" in caplog.text
    assert not (tmp_path / "corrupt").exists()
