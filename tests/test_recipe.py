"""The fine-tuning recipe: a validation slice picks the best epoch, full mode warms the head up first and moves the
conv layers at a fraction of the learning rate. Runs on random nets and synthetic photos (no data folder)."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from psyattr.checkpoints import EpochCheckpoint, best_epoch, checkpoint_name
from psyattr.cli import cli
from psyattr.models.optimizers import GroupSGD
from psyattr.train import MIN_VALIDATION_FACES, validation_slice
from tests.conftest import synthetic_faces


def test_group_sgd_moves_each_group_at_its_share_of_the_learning_rate(tmp_path):
    inputs = keras.Input((3,))
    features = keras.layers.Dense(2, name="conv1", kernel_initializer="ones")(inputs)
    head = keras.layers.Dense(2, name="fc8", kernel_initializer="ones")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([features, head]))
    model.compile(optimizer=GroupSGD(0.1, group_scales={"features": 0.25}), loss="mse")
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    before = {name: model.get_layer(name).get_weights()[0].copy() for name in ("conv1", "fc8")}
    model.train_on_batch(x, y)
    moved = {name: before[name] - model.get_layer(name).get_weights()[0] for name in before}
    # Both layers see the same gradient: conv1 (the features group) takes a quarter of fc8's step.
    assert np.abs(moved["fc8"]).min() > 0
    np.testing.assert_allclose(moved["conv1"], 0.25 * moved["fc8"], rtol=1e-5)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, GroupSGD) and loaded.optimizer.group_scales == {"features": 0.25}
    with pytest.raises(ValueError, match="unknown layer group"):
        GroupSGD(group_scales={"convs": 0.1})


def test_the_validation_slice_is_seeded_disjoint_and_absent_for_tiny_runs():
    fit, val = validation_slice(100, 0.1, seed=3)
    assert len(val) == 10 and len(fit) == 90 and not set(fit) & set(val) and set(fit) | set(val) == set(range(100))
    again, same = validation_slice(100, 0.1, seed=3)
    assert same.tolist() == val.tolist() and validation_slice(100, 0.1, seed=4)[1].tolist() != val.tolist()
    small_fit, none = validation_slice(10 * MIN_VALIDATION_FACES - 10, 0.1, seed=0)
    assert len(none) == 0 and len(small_fit) == 10 * MIN_VALIDATION_FACES - 10
    assert len(validation_slice(100, 0.0, seed=0)[1]) == 0


def test_checkpoints_keep_the_best_epoch_whatever_else_they_prune(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    checkpoint = EpochCheckpoint(tmp_path, {"kind": "test"}, [], keep=1, monitor="validation_mae")
    checkpoint.set_model(model)
    for epoch, score in enumerate([0.5, 0.2, 0.4, 0.3]):
        checkpoint.on_epoch_end(epoch, {"validation_mae": score})
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == [checkpoint_name(2).split("/")[1], checkpoint_name(4).split("/")[1]]
    assert best_epoch(checkpoint.history, "validation_mae") == 2
    assert best_epoch([{"epoch": 1}], "validation_mae") is None


@pytest.fixture(scope="module")
def synthetic_rated(tmp_path_factory):
    """120 synthetic photos with a rating that their brightness explains, as a generic CSV (1..9)."""
    folder = tmp_path_factory.mktemp("synthetic")
    images = synthetic_faces(120, seed=11)
    with open(folder / "ratings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "bright"])
        brightness = images.mean(axis=(1, 2, 3))
        ratings = 1 + 8 * (brightness - brightness.min()) / (brightness.max() - brightness.min())
        for index, (image, rating) in enumerate(zip(images, ratings)):
            path = folder / f"{index:03d}.png"
            Image.fromarray(image.astype(np.uint8)).save(path)
            writer.writerow([path, f"{rating:.3f}"])
    return folder / "ratings.csv"


@pytest.fixture(scope="module")
def random_base(tmp_path_factory):
    from tests.test_lrp_explainer import random_net

    path = tmp_path_factory.mktemp("base") / "age.keras"
    random_net("age", 4, zero_bias=False, framing="none").save(path)
    return path


def _validation_mae(model: keras.Model, run, rated) -> float:
    """The MAE ([0, 1] scale) of `model` on the run's validation faces, read back from the files as a user would."""
    from psyattr.data.images import load_model_input

    ids = json.loads((run / "split.json").read_text())["validation"]
    by_path = {row["image"]: float(row["bright"]) for row in csv.DictReader(open(rated))}
    images = np.stack([load_model_input(i) for i in ids])
    predicted = model.predict(images, verbose=0)[:, 0]
    return float(np.mean(np.abs(predicted - (np.array([by_path[i] for i in ids]) - 1) / 8)))


@pytest.mark.slow
def test_full_mode_starts_from_its_cells_dense_run_and_keeps_the_epoch_best_on_validation(tmp_path, synthetic_rated,
                                                                                          random_base):
    common = ["train", "--base", str(random_base), "--attribute", "bright", "--data", f"csv:{synthetic_rated}",
              "--scale", "1,9", "--batch-size", "16", "--validation", "0.1", "--cache-dir", str(tmp_path / "cache"),
              "--no-progress"]
    dense = CliRunner().invoke(cli, [*common, "--mode", "dense", "--epochs", "4", "--out", str(tmp_path / "dense")])
    assert dense.exit_code == 0, dense.output
    run = tmp_path / "full"
    result = CliRunner().invoke(cli, [*common, "--mode", "full", "--epochs", "3", "--warmup-epochs", "4", "--out",
                                      str(run)])
    assert result.exit_code == 0, result.output
    split = json.loads((run / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "validation", "test")] == [54, 6, 60]
    assert not set(split["validation"]) & (set(split["train"]) | set(split["test"]))
    assert not set(split["train"]) & set(split["test"])
    assert split == json.loads((tmp_path / "dense" / "split.json").read_text())

    warm = json.loads((run / "warmup" / "state.json").read_text())["history"]
    full = json.loads((run / "state.json").read_text())["history"]
    assert [h["epoch"] for h in warm] == [1, 2, 3, 4] and [h["epoch"] for h in full] == [1, 2, 3]
    # Seeded: the warm-up is the dense run of the same cell, epoch for epoch, so full mode never starts behind it.
    dense_history = json.loads((tmp_path / "dense" / "state.json").read_text())["history"]
    assert [h["validation_mae"] for h in warm] == [h["validation_mae"] for h in dense_history]
    assert all("validation_mae" in h for h in full)
    best = min(h["validation_mae"] for h in warm + full)
    # The saved model is the one with the lowest validation MAE of the warm-up and the whole-net epochs.
    model = keras.models.load_model(run / "model.keras")
    assert _validation_mae(model, run, synthetic_rated) == pytest.approx(best, rel=1e-3, abs=1e-5)
    base = keras.models.load_model(random_base)
    moved = not np.array_equal(model.get_layer("conv1").get_weights()[0], base.get_layer("conv1").get_weights()[0])
    whole_net_won = best < min(h["validation_mae"] for h in warm)
    assert moved == whole_net_won  # conv1 moved exactly when a whole-net epoch beat the warmed-up head
    selected = json.loads((run / "metrics.json").read_text())["selected"]
    assert selected["stage"] == ("whole net" if whole_net_won else "warm-up")
    assert selected["validation_mae"] == pytest.approx(best)
    assert json.loads((tmp_path / "dense" / "metrics.json").read_text())["selected"]["stage"] == "head"


def test_a_grid_trains_every_mode_on_the_split_and_the_fast_ones_under_cross_validation():
    from psyattr.grid import default_modes

    assert default_modes(None) == ("ridge", "dense", "full") and default_modes(10) == ("ridge", "dense")


def test_a_recipe_out_of_range_is_refused_naming_the_setting(tmp_path, synthetic_rated, random_base):
    from psyattr.train import TrainConfig

    for settings, named in (({"validation": 0.5}, "validation"), ({"feature_lr_scale": 2.0}, "feature_lr_scale"),
                            ({"warmup_epochs": -1}, "warmup_epochs"), ({"schedule": "step"}, "unknown schedule")):
        with pytest.raises(ValueError, match=named):
            TrainConfig("age", "full", ["happy"], **settings)
    result = CliRunner().invoke(cli, ["train", "--base", str(random_base), "--mode", "dense", "--attribute", "bright",
                                      "--data", f"csv:{synthetic_rated}", "--scale", "1,9", "--validation", "0.5",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--validation" in result.output and not (tmp_path / "run").exists()
