"""Explanation quality: patch geometry, perturbation curves checked by hand, AOPC on a model whose truth is known."""

from __future__ import annotations

import csv
import dataclasses
import io

import keras
import numpy as np
import pytest

from psyattr.attribution import build_explainer, build_score_function, method_names, preactivation_model
from psyattr.explanation import Explanation
from psyattr.lrp import COMPOSITES
from psyattr.models.layers import CaffePreprocess
from psyattr.models.regressor import build_attribute_regressor
from psyattr.studies.perturbation import aopc, patch_grid, patch_order, perturbation_curves, perturbation_values
from psyattr.studies.quality import (
    plot_perturbation_curves, quality_table_csv, quality_table_markdown, run_region_perturbation, write_quality_table,
)
from tests.test_lrp_explainer import random_net, spread_head

GRADIENT_BASED = [*COMPOSITES, "gradient_x_input"]


def quadrant_net(seed: int = 0) -> keras.Model:
    """A small Levi-Hassner-shaped net whose logits only see the top-left quadrant of the image.

    All weights are nonnegative, so each logit rises with every pixel of that quadrant and ignores the
    rest: the truly relevant patches are the bright ones in the top-left corner.
    """
    rng = np.random.default_rng(seed)
    inputs = keras.Input((227, 227, 3), name="image")
    x = CaffePreprocess(name="data")(inputs)
    x = keras.layers.Conv2D(4, 7, strides=4, padding="valid", name="conv1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool5")(x)  # 14 x 14 x 4
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc7")(x)
    logits = keras.layers.Dense(2, name="fc8")(x)
    model = keras.Model(inputs, keras.layers.Softmax(name="prob")(logits), name="quadrant_net")

    def nonnegative(shape):  # each output unit's weights sum to 1
        w = rng.uniform(0, 1, shape)
        return (w / w.reshape(-1, shape[-1]).sum(axis=0)).astype("float32")

    # A positive conv1 bias keeps most units active on Caffe-centred pixels (-115..177).
    model.get_layer("conv1").set_weights([nonnegative((7, 7, 3, 4)), np.full(4, 60.0, "float32")])
    model.get_layer("conv3").set_weights([nonnegative((3, 3, 4, 4)), np.zeros(4, "float32")])
    quadrant = np.zeros((14, 14, 4, 8), "float32")
    quadrant[:7, :7] = nonnegative((7, 7, 4, 8)).reshape(7, 7, 4, 8)
    model.get_layer("fc7").set_weights([quadrant.reshape(784, 8), np.zeros(8, "float32")])
    model.get_layer("fc8").set_weights([nonnegative((8, 2)), np.zeros(2, "float32")])
    return model


def blocky_images(count: int, seed: int = 0, block: int = 19) -> np.ndarray:
    """Images of random flat-coloured squares: bright and dark regions in every quadrant."""
    rng = np.random.default_rng(seed)
    cells = -(-227 // block)
    values = rng.uniform(0, 255, (count, cells, cells, 3))
    return np.repeat(np.repeat(values, block, axis=1), block, axis=2)[:, :227, :227].astype("float32")


def scaled_regressor(initial_score: float = 0.5) -> keras.Model:
    """A "happy" regressor on an age net with random weights, its scores spread by about 0.2 around `initial_score`."""
    regressor = build_attribute_regressor(random_net("age", 0, zero_bias=False), ["happy"], [(0, 100)], mode="dense",
                                          initial_scores=[initial_score])
    return spread_head(regressor, blocky_images(4, seed=3), 0.2, centre=initial_score)


@pytest.fixture(scope="module")
def quadrant_model() -> keras.Model:
    return quadrant_net()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return blocky_images(6)


@pytest.fixture(scope="module")
def study(quadrant_model, images):
    """Every method plus an anti-explanation (least relevant first) on the quadrant net."""
    epsilon = build_explainer(quadrant_model, "epsilon", jit_compile=False)
    methods = {name: build_explainer(quadrant_model, name, jit_compile=False, smooth_samples=4)
               for name in method_names()}
    methods["epsilon_reversed"] = lambda x, t: negated(epsilon(x, t))
    return run_region_perturbation(quadrant_model, images, 0, methods, steps=12, patch=15, batch_size=6)


def negated(explanation: Explanation) -> Explanation:
    """The same explanation with every relevance value's sign flipped: least relevant first."""
    return dataclasses.replace(explanation, relevance=-explanation.relevance)


def test_patches_tile_a_centred_grid_of_equal_squares():
    tops, lefts = patch_grid(227, 227, 9)
    assert len(tops) == 25 * 25
    assert (tops.min(), tops.max() + 9, lefts.min(), lefts.max() + 9) == (1, 226, 1, 226)
    assert (tops[1], lefts[1]) == (1, 10)  # row by row
    tops, _ = patch_grid(227, 227, 15)
    assert len(tops) == 15 * 15 and tops.min() == 1
    with pytest.raises(ValueError, match="patch must be a whole number of pixels from 1 to 227"):
        patch_grid(227, 227, 0)


def test_the_hottest_patch_goes_first_and_ties_fall_in_a_seeded_random_order():
    heat = np.zeros((2, 227, 227), np.float32)
    tops, lefts = patch_grid(227, 227, 9)
    heat[0, tops[37]:tops[37] + 9, lefts[37]:lefts[37] + 9] = 1.0
    heat[0, tops[400] + 4, lefts[400] + 4] = 0.5
    order = patch_order(heat, 9, seed=0)
    assert list(order[0, :2]) == [37, 400]
    # Image 1 is all ties: a fixed random order, not the top-left corner first.
    assert sorted(order[1]) == list(range(625)) and list(order[1, :5]) != [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(order[1], patch_order(heat, 9, seed=0)[1])
    assert not np.array_equal(order[1], patch_order(heat, 9, seed=1)[1])


def test_curves_of_a_linear_score_match_a_hand_computation():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (3, 227, 227, 3)).astype(np.float32)
    weights = np.zeros((227, 227, 3), np.float32)
    weights[:100, :120] = rng.uniform(0, 1e-3, (100, 120, 3))
    score_fn = lambda x: np.stack([(x * weights).sum(axis=(1, 2, 3)), -(x * weights).sum(axis=(1, 2, 3))], axis=1)
    heat = (images * weights).sum(axis=-1)  # the exact contribution of each pixel
    targets = np.array([0, 0, 1])
    curves = perturbation_curves(score_fn, images, heat, targets, steps=6, patch=15, perturbation="mean")

    order = patch_order(heat, 15)
    tops, lefts = patch_grid(227, 227, 15)
    mean = images.mean(axis=(1, 2))
    sign = np.array([1.0, 1.0, -1.0])
    for n in range(3):
        removed = np.zeros((227, 227), bool)
        for k in range(7):
            expected = sign[n] * (np.where(removed[..., None], mean[n], images[n]) * weights).sum()
            assert curves[n, k] == pytest.approx(expected, rel=1e-5)
            if k < 6:
                p = order[n, k]
                removed[tops[p]:tops[p] + 15, lefts[p]:lefts[p] + 15] = True
    assert np.all(np.diff(curves[:2], axis=1) <= 1e-6)  # removing positive evidence only lowers the score
    np.testing.assert_allclose(aopc(curves), (curves[:, :1] - curves).mean(axis=1))


def test_perturbation_values_are_seeded_per_image():
    images = blocky_images(3)
    noise = perturbation_values(images, "uniform", seed=0)
    assert noise.shape == images.shape and 0 <= noise.min() and noise.max() <= 255
    np.testing.assert_array_equal(noise[1:], perturbation_values(images[1:], "uniform", seed=0))
    assert not np.array_equal(noise, perturbation_values(images, "uniform", seed=1))
    np.testing.assert_allclose(perturbation_values(images, "mean")[:, 5, 7], images.mean(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown perturbation 'blur': expected one of uniform, mean"):
        perturbation_values(images, "blur")


def test_explanations_of_a_model_that_sees_one_quadrant_beat_random(study, quadrant_model, images):
    random, reversed_ = study.methods["random"], study.methods["epsilon_reversed"]
    for name in GRADIENT_BASED:
        method = study.methods[name]
        difference = method.aopc - random.aopc
        assert difference.mean() > 3 * difference.std(ddof=1) / np.sqrt(len(difference)), name
        assert method.aopc_mean > 5 * abs(random.aopc_mean), name
    # Removing the least relevant patches first is worse than any ordering, random included.
    assert reversed_.aopc_mean < random.aopc_mean < study.methods["epsilon"].aopc_mean
    assert study.methods["saliency"].aopc_mean > random.aopc_mean
    assert study.methods["smoothgrad"].aopc_mean > random.aopc_mean
    # Every curve starts at the explained logit itself, with no drop.
    logits = build_score_function(quadrant_model, jit_compile=False)(images)[:, 0]
    for method in study.methods.values():
        np.testing.assert_allclose(method.scores[:, 0], logits, rtol=1e-5)
        assert method.curve[0] == 0 and method.curve.shape == (13,) and method.aopc.shape == (6,)
    assert study.ranking()[0].aopc_mean == max(m.aopc_mean for m in study.methods.values())


def test_the_same_seed_gives_the_same_numbers_in_any_batch_size(quadrant_model, images):
    run = lambda seed, batch: run_region_perturbation(quadrant_model, images[:4], 0, ["random", "epsilon"], steps=4,
                                                patch=15, seed=seed, batch_size=batch, jit_compile=False)
    first, again, other = run(0, 4), run(0, 3), run(1, 4)
    for name in ("random", "epsilon"):
        np.testing.assert_allclose(first.methods[name].scores, again.methods[name].scores, rtol=1e-5)
        assert not np.allclose(first.methods[name].scores[:, 1:], other.methods[name].scores[:, 1:])


def test_mean_perturbation_and_per_image_targets(quadrant_model, images):
    results = run_region_perturbation(quadrant_model, images[:2], [0, 1], ["epsilon"], steps=3, patch=45,
                                perturbation="mean", jit_compile=False)
    logits = build_score_function(quadrant_model, jit_compile=False)(images[:2])
    np.testing.assert_allclose(results.methods["epsilon"].scores[:, 0], logits[[0, 1], [0, 1]], rtol=1e-5)
    assert list(results.targets) == [0, 1] and results.perturbation == "mean"


def test_clear_errors(quadrant_model, images):
    with pytest.raises(ValueError, match=r"unknown attribution method 'lime': expected one of epsilon, .*, random"):
        run_region_perturbation(quadrant_model, images, 0, ["epsilon", "lime"])
    with pytest.raises(ValueError, match=r"images must have shape \(N, 227, 227, 3\).* got \(2, 224, 224, 3\)"):
        run_region_perturbation(quadrant_model, np.zeros((2, 224, 224, 3)), 0, ["random"])
    with pytest.raises(ValueError, match="add a batch axis"):
        run_region_perturbation(quadrant_model, images[0], 0, ["random"])
    with pytest.raises(ValueError, match=r"steps must be from 1 to the number of 45x45 patches \(25\), got 30"):
        run_region_perturbation(quadrant_model, images, 0, ["random"], steps=30, patch=45)
    with pytest.raises(ValueError, match="unknown target 'happy': the outputs of model 'quadrant_net' are 0, 1"):
        run_region_perturbation(quadrant_model, images, "happy", ["random"])
    with pytest.raises(ValueError, match="Grad-CAM needs the layer 'conv5'.*conv1, conv3"):
        build_explainer(quadrant_model, "gradcam", penultimate_layer="conv5")

    inputs = keras.Input((227, 227, 3))
    flat = keras.layers.Flatten()(keras.layers.AveragePooling2D(227)(inputs))
    no_fc8 = keras.Model(inputs, keras.layers.Dense(2, name="logits")(flat), name="plain")
    with pytest.raises(ValueError, match="model 'plain' has no layer 'fc8': expected a psyattr base net or attribute"):
        run_region_perturbation(no_fc8, images, 0, ["random"])
    with pytest.raises(ValueError, match="no layer 'fc8'"):
        build_explainer(no_fc8, "saliency")
    fused = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="fc8")(flat), name="fused")
    with pytest.raises(ValueError, match="layer 'fc8' of model 'fused' applies 'softmax': expected a linear fc8"):
        run_region_perturbation(fused, images, 0, ["random"])


def test_a_broken_custom_method_is_named(quadrant_model, images):
    def coarse(x, t):
        return Explanation(np.asarray(t), ["0"] * len(x), np.zeros(len(x)), np.ones((len(x), 14, 14)))

    with pytest.raises(ValueError, match=r"method 'coarse' returned heatmaps of shape \(2, 14, 14\)"):
        run_region_perturbation(quadrant_model, images[:2], 0, {"coarse": coarse}, steps=2, patch=45)
    with pytest.raises(TypeError, match="method 'bare' returned ndarray, expected an Explanation"):
        run_region_perturbation(quadrant_model, images[:2], 0, {"bare": lambda x, t: np.ones(x.shape[:3])},
                                steps=2, patch=45)


def test_tf_keras_vis_methods_explain_the_unclipped_score_of_a_regressor():
    regressor = scaled_regressor(initial_score=1.5)
    faces = blocky_images(2, seed=1)
    unclipped = build_score_function(regressor, jit_compile=False)(faces)
    clipped = np.asarray(regressor(faces, training=False))
    # The study sees the score before clipping: outside [0, 1] it differs from the model's clipped output.
    assert np.all((clipped >= 0.0) & (clipped <= 1.0))
    outside = (unclipped < 0.0) | (unclipped > 1.0)
    assert outside.any() and not np.allclose(unclipped[outside], clipped[outside])
    assert preactivation_model(regressor).outputs[0].shape[-1] == 1
    np.random.seed(7)
    expected_draw = np.random.random()
    np.random.seed(7)
    heatmaps = {}
    for name in ("saliency", "smoothgrad", "gradcam"):
        explanation = build_explainer(regressor, name, smooth_samples=2)(faces, "happy")
        heatmaps[name] = explanation.heatmap
        assert heatmaps[name].shape == (2, 227, 227), name
        assert np.isfinite(heatmaps[name]).all() and heatmaps[name].std() > 0, name
        # One target rule for every method: the name is resolved as the LRP explainer resolves it.
        assert list(explanation.targets) == [0, 0] and explanation.target_names == ["happy", "happy"]
        np.testing.assert_allclose(explanation.scores, unclipped[:, 0], rtol=1e-4)
        np.testing.assert_allclose(explanation.outputs["happy"], clipped[:, 0], rtol=1e-4)
    assert np.random.random() == expected_draw  # SmoothGrad hands NumPy's global generator back untouched
    again = build_explainer(regressor, "smoothgrad", smooth_samples=2)(faces, "happy")
    np.testing.assert_allclose(again.heatmap, heatmaps["smoothgrad"], rtol=1e-4)
    results = run_region_perturbation(regressor, faces, "happy", ["gradcam", "random"], steps=2, patch=75, batch_size=2)
    np.testing.assert_allclose(results.methods["gradcam"].scores[:, 0], unclipped[:, 0], rtol=1e-4)


def test_every_method_checks_images_and_targets_by_the_one_rule(quadrant_model, images):
    for name in ("epsilon", "gradient", "saliency", "random"):
        method = build_explainer(quadrant_model, name, jit_compile=False)
        with pytest.raises(ValueError, match="add a batch axis"):
            method(images[0], 0)
        with pytest.raises(ValueError, match="unknown target 'happy': the outputs of model 'quadrant_net' are 0, 1"):
            method(images[:2], "happy")
        with pytest.raises(ValueError, match="got 3 targets for 2 images"):
            method(images[:2], [0, 1, 0])
        explanation = method(images[:2], "1")  # an index written as text, as the command line gives it
        assert list(explanation.targets) == [1, 1] and explanation.heatmap.shape == (2, 227, 227), name
        assert method.name == name
    top = build_explainer(quadrant_model, "random")(images[:3])
    logits = build_score_function(quadrant_model, jit_compile=False)(images[:3])
    assert list(top.targets) == list(np.argmax(logits, axis=1))


def test_plot_and_tables(study, tmp_path):
    png = plot_perturbation_curves(study, tmp_path / "curves.png", title="quadrant net")
    assert png.stat().st_size > 10_000
    markdown = quality_table_markdown(study)
    assert markdown.startswith("| rank | method | AOPC | AOPC − random | s / image |")
    assert len(markdown.strip().splitlines()) == 2 + len(study.methods)
    assert "| 1 | " in markdown and "epsilon_reversed" in markdown.strip().splitlines()[-1]
    rows = list(csv.DictReader(io.StringIO(quality_table_csv(study))))
    assert [r["method"] for r in rows] == [m.name for m in study.ranking()]
    assert float(rows[0]["aopc"]) == pytest.approx(study.ranking()[0].aopc_mean)
    assert rows[0]["steps"] == "12" and rows[0]["patch"] == "15" and rows[0]["perturbation"] == "uniform"
    markdown_file = write_quality_table(study, tmp_path / "quality.md")
    assert markdown_file.read_text().startswith("Region perturbation, quadrant_net: 6 images, 12 steps of 15x15")
    assert write_quality_table(study, tmp_path / "quality.csv").read_text() == quality_table_csv(study)
    with pytest.raises(ValueError, match="give a .md or .csv path"):
        write_quality_table(study, tmp_path / "quality.txt")
