"""Ridge mode: the closed-form head, its leave-one-out penalty, and the model it makes (saved, explained)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from psyattr.lrp import LRPExplainer
from psyattr.models.layers import RootFeatures
from psyattr.models.regressor import build_attribute_regressor
from psyattr.ridge import fit_ridge, root_features
from tests.test_lrp_explainer import random_net


def _linear_task(count: int, width: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, width))
    w = rng.normal(size=width)
    return x, x @ w / np.sqrt(width) + noise * rng.normal(size=count)


def test_a_linear_signal_is_recovered_on_unseen_rows_and_pure_noise_is_shrunk_away():
    x, y = _linear_task(300, 40, 0.05)
    fit = fit_ridge(x[:200], y[:200])
    predicted = fit.predict(x[200:])[:, 0]
    assert np.corrcoef(predicted, y[200:])[0, 1] > 0.99
    noise = np.random.default_rng(1).normal(size=200)
    shrunk = fit_ridge(x[:200], noise)
    # Nothing to learn: the penalty chosen is large and the predictions stay near the mean.
    assert shrunk.penalties[0] > 100 * fit.penalties[0]
    assert shrunk.predict(x[200:])[:, 0].std() < 0.2 * noise.std()


def test_the_leave_one_out_error_is_what_refitting_without_each_face_gives():
    x, y = _linear_task(40, 120, 0.5, seed=2)  # more features than faces, as pool5 has
    penalty = 0.5
    fit = fit_ridge(x, y, penalties=(penalty,))
    held_out = [fit_ridge(np.delete(x, i, 0), np.delete(y, i), penalties=(penalty,)).predict(x[i:i + 1])[0, 0]
                for i in range(len(y))]
    refit_mse = float(np.mean((np.asarray(held_out) - y) ** 2))
    # Exact for the scaling of all faces; a refit rescales by n - 1 faces, a hair different.
    assert fit.loo_mse[0] == pytest.approx(refit_mse, rel=0.02)


def test_each_target_column_gets_its_own_penalty():
    x, signal = _linear_task(150, 30, 0.05)
    noise = np.random.default_rng(3).normal(size=150)
    fit = fit_ridge(x, np.stack([signal, noise], 1))
    assert fit.kernel.shape == (30, 2) and fit.penalties[1] > 100 * fit.penalties[0]


@pytest.mark.parametrize("features, targets, message", [
    (np.zeros((2, 5)), np.zeros(2), "N >= 3"),
    (np.zeros((4, 5)), np.zeros(3), "N target rows"),
    (np.full((4, 5), np.nan), np.zeros(4), "finite"),
])
def test_bad_inputs_are_refused(features, targets, message):
    with pytest.raises(ValueError, match=message):
        fit_ridge(features, targets)


def test_the_layer_computes_what_the_fit_saw_and_has_a_finite_gradient_at_zero():
    values = np.array([[0.0, 0.25, 4.0, 100.0, -1.0]], np.float32)
    np.testing.assert_allclose(RootFeatures(1e-4)(values).numpy(), root_features(values, 1e-4), rtol=1e-5, atol=1e-6)
    import tensorflow as tf

    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(RootFeatures(1e-4)(x))
    assert np.isfinite(tape.gradient(y, x).numpy()).all()
    with pytest.raises(ValueError, match="positive offset"):
        RootFeatures(0.0)


@pytest.fixture(scope="module")
def ridge_regressor(face_images):
    model = build_attribute_regressor(random_net("age", 4, zero_bias=False), ["happy", "attractive"],
                                      [(1, 9), (0, 100)], mode="ridge", initial_scores=[0.5, 0.5])
    fc8 = model.get_layer("fc8")
    features = keras.Model(model.inputs, fc8.input)([face_images[:4]]).numpy()
    kernel = np.random.default_rng(0).normal(size=(features.shape[1], 2))
    kernel *= 0.2 / np.maximum((features @ kernel).std(axis=0), 1e-6)
    fc8.set_weights([kernel.astype("float32"), (0.5 - (features @ kernel).mean(axis=0)).astype("float32")])
    return model


def test_ridge_regressor_has_no_fc6_or_fc7_trains_only_its_head_and_survives_saving(ridge_regressor, face_images,
                                                                                     tmp_path):
    names = {layer.name for layer in ridge_regressor.layers}
    assert "root" in names and not {"fc6", "fc7"} & names
    assert [layer.name for layer in ridge_regressor.layers if layer.trainable_weights] == ["fc8"]
    ridge_regressor.save(tmp_path / "ridge.keras")
    loaded = keras.models.load_model(tmp_path / "ridge.keras")
    np.testing.assert_allclose(loaded.predict(face_images[:2], verbose=0),
                               ridge_regressor.predict(face_images[:2], verbose=0), rtol=1e-5)


@pytest.mark.parametrize("composite", ["epsilon", "alpha2beta1", "gradient", "gradient_x_input"])
def test_ridge_regressor_is_explained_with_finite_heatmaps(ridge_regressor, face_images, composite):
    explanation = LRPExplainer(ridge_regressor, composite)(face_images[:2], "happy")
    assert explanation.relevance.shape == (2, 227, 227, 3)
    assert np.isfinite(explanation.relevance).all() and np.abs(explanation.relevance).max() > 0
