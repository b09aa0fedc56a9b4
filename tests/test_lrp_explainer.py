"""The relevance graph on the full Levi-Hassner net: conservation, XLA vs eager, batching, bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from psyattr.lrp import COMPOSITES, AlphaBeta, Epsilon, LRPError, LRPExplainer, ZBox
from psyattr.lrp.composites import get_composite
from psyattr.models import build_base_model
from psyattr.models.weights import randomize_weights

EXPECTED_COMPOSITES = {"epsilon", "alpha2beta1", "alpha1beta0", "epsilon_plus", "epsilon_alpha2beta1",
                       "epsilon_plus_flat", "epsilon_alpha2beta1_flat", "epsilon_gamma_box"}


def random_net(task: str, seed: int, zero_bias: bool, framing: str = "utkface") -> keras.Model:
    from psyattr.faces.framing import get_framing

    return randomize_weights(build_base_model(task, framing=get_framing(framing).to_json()), seed, zero_bias)


def spread_head(regressor: keras.Model, images: np.ndarray, spread: float, centre=None, seed: int = 0) -> keras.Model:
    """Give a regressor's fc8 a random kernel whose scores of `images` vary by `spread` (std) per attribute.

    New heads start with a zero kernel (the predict-the-mean baseline), which no explanation method could
    explain. With `centre`, the bias puts the mean score there; otherwise the bias is kept.
    """
    fc8 = regressor.get_layer("fc8")
    features = keras.Model(regressor.inputs, fc8.input)([images], training=False).numpy()
    kernel = np.random.default_rng(seed).normal(0.0, 1.0, (features.shape[1], fc8.units)).astype("float32")
    kernel *= spread / np.maximum((features @ kernel).std(axis=0), 1e-6)
    bias = fc8.get_weights()[1] if centre is None else centre - (features @ kernel).mean(axis=0)
    fc8.set_weights([kernel.astype("float32"), np.asarray(bias, "float32")])
    return regressor


@pytest.fixture(scope="module")
def zero_bias_net() -> keras.Model:
    return random_net("age", 0, zero_bias=True)


@pytest.fixture(scope="module")
def biased_net() -> keras.Model:
    return random_net("age", 1, zero_bias=False)


def test_all_composites_are_registered():
    assert EXPECTED_COMPOSITES <= set(COMPOSITES)


@pytest.mark.parametrize("composite, options", [("epsilon", {"epsilon": 1e-9}), ("alpha2beta1", {})])
def test_relevance_sums_to_the_logit_with_zero_biases(zero_bias_net, face_images, composite, options):
    explainer = LRPExplainer(zero_bias_net, composite, jit_compile=True, **options)
    logits = explainer.scores(face_images[:4])
    # Never divide by a score near zero: explain each image's largest-magnitude logit.
    targets = np.argmax(np.abs(logits), axis=1)
    assert np.abs(logits[np.arange(4), targets]).min() > 1.0
    explanation = explainer(face_images[:4], targets)
    scores, relevance = explanation.scores, explanation.relevance
    np.testing.assert_allclose(scores, logits[np.arange(4), targets], rtol=1e-5)
    sums = relevance.reshape(4, -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(sums, scores, rtol=1e-3)
    assert relevance.shape == (4, 227, 227, 3) and relevance.dtype == np.float32


@pytest.mark.parametrize("composite", sorted(EXPECTED_COMPOSITES) + ["gradient", "gradient_x_input"])
def test_jit_and_eager_agree(biased_net, face_images, composite):
    jit = LRPExplainer(biased_net, composite, jit_compile=True)(face_images[:2], [0, 3])
    eager = LRPExplainer(biased_net, composite, jit_compile=False)(face_images[:2], [0, 3])
    np.testing.assert_allclose(jit.scores, eager.scores, rtol=1e-5)
    assert np.abs(jit.relevance - eager.relevance).max() <= 1e-5 * np.abs(eager.relevance).max()
    assert np.isfinite(jit.relevance).all()


def test_results_do_not_depend_on_batch_size_or_position(biased_net, face_images):
    explainer = LRPExplainer(biased_net, "alpha2beta1")
    alone = explainer(face_images[2:3], 5).relevance[0]
    batch = explainer(face_images[:6], 5).relevance
    reversed_batch = explainer(face_images[:6][::-1].copy(), 5).relevance
    scale = np.abs(alone).max()
    assert np.abs(batch[2] - alone).max() <= 1e-5 * scale
    assert np.abs(reversed_batch[3] - alone).max() <= 1e-5 * scale


def test_one_trace_serves_every_call_of_the_same_shape(biased_net, face_images):
    explainer = LRPExplainer(biased_net, "epsilon")
    for target in (0, 1, "25-32"):
        explainer(face_images[:2], target)
    assert explainer._explain_fn.experimental_get_tracing_count() == 1


def test_zero_pre_activation_gives_no_nan():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden", kernel_initializer="zeros")(inputs)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    for composite in sorted(EXPECTED_COMPOSITES - {"epsilon_gamma_box"}) + ["gradient"]:
        explainer = LRPExplainer(model, composite, jit_compile=False)
        relevance = explainer(np.zeros((2, 6), np.float32), 0).relevance
        assert np.isfinite(relevance).all(), composite
        assert np.all(relevance == 0)


def test_layer_rules_by_name_override_the_composite(biased_net, face_images):
    plain = LRPExplainer(biased_net, "epsilon")
    mixed = LRPExplainer(biased_net, "epsilon", layer_rules={"conv1": AlphaBeta(2, 1)})
    assert mixed.graph.rules["conv1"] == AlphaBeta(2, 1) and mixed.graph.rules["conv2"] == Epsilon()
    assert not np.allclose(plain(face_images[:1], 0).relevance, mixed(face_images[:1], 0).relevance)
    with pytest.raises(LRPError, match="rules given for layers not in age_net: conv9"):
        LRPExplainer(biased_net, "epsilon", layer_rules={"conv9": Epsilon()})


def test_zbox_bounds_come_from_the_caffe_preprocessing(biased_net):
    rule = LRPExplainer(biased_net, "epsilon_gamma_box").graph.rules["conv1"]
    assert isinstance(rule, ZBox)
    np.testing.assert_allclose(rule.low, [-78.426, -87.769, -114.896])
    np.testing.assert_allclose(rule.high, [255 - 78.426, 255 - 87.769, 255 - 114.896])


def test_targets_by_name_index_or_per_image(biased_net, face_images):
    explainer = LRPExplainer(biased_net, "epsilon")
    by_name = explainer(face_images[:2], "25-32")
    by_index = explainer(face_images[:2], 4)
    np.testing.assert_array_equal(by_name.relevance, by_index.relevance)
    per_image = explainer(face_images[:2], [4, 0])
    np.testing.assert_allclose(per_image.relevance[0], by_index.relevance[0], rtol=1e-6)
    top = explainer(face_images[:2])
    np.testing.assert_allclose(top.scores, explainer.scores(face_images[:2]).max(axis=1), rtol=1e-6)


def test_bad_targets_name_the_outputs(biased_net, face_images):
    explainer = LRPExplainer(biased_net, "epsilon")
    with pytest.raises(ValueError, match=r"target 8 is out of range: model 'age_net' has 8 outputs \(0..7: 0-2, 4-6"):
        explainer(face_images[:1], 8)
    with pytest.raises(ValueError, match=r"unknown target 'happy': the outputs of model 'age_net' are 0-2, 4-6"):
        explainer(face_images[:1], "happy")
    with pytest.raises(ValueError, match="got 3 targets for 2 images"):
        explainer(face_images[:2], [0, 1, 2])


def test_bad_images_are_refused_with_the_expected_shape(biased_net, face_images):
    explainer = LRPExplainer(biased_net, "epsilon")
    with pytest.raises(ValueError, match=r"must have shape \(N, 227, 227, 3\), got \(1, 224, 224, 3\)"):
        explainer(np.zeros((1, 224, 224, 3), np.float32), 0)
    with pytest.raises(ValueError, match=r"got one image \(227, 227, 3\): add a batch axis"):
        explainer(face_images[0], 0)
    with pytest.raises(ValueError, match="must be float .* got dtype <U1|must be float .* got dtype"):
        explainer(np.full((1, 227, 227, 3), "a"), 0)
    with pytest.raises(ValueError, match="NaN"):
        explainer(np.full((1, 227, 227, 3), np.nan, np.float32), 0)
    with pytest.raises(ValueError, match="empty batch"):
        explainer(np.zeros((0, 227, 227, 3), np.float32), 0)


def test_unsupported_layer_is_refused_up_front_with_name_and_type():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    with pytest.raises(LRPError, match=r"layers without an LRP rule: 'bn' \(BatchNormalization\)"):
        LRPExplainer(model)


def test_fused_activations_are_split_and_unknown_composites_refused(face_images):
    inputs = keras.Input((10,))
    x = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))
    explainer = LRPExplainer(model, "epsilon", jit_compile=False, epsilon=1e-9)
    x_in = np.random.default_rng(0).normal(size=(2, 10)).astype("float32")
    logits = explainer.scores(x_in)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # pre-softmax values, not probabilities
    with pytest.raises(ValueError, match="unknown composite 'lrp_magic'"):
        get_composite("lrp_magic")


def test_max_pool_ties_share_relevance_the_same_way_under_xla_and_eager():
    inputs = keras.Input((4, 4, 1))
    pooled = keras.layers.MaxPooling2D(2, 2, name="pool")(inputs)
    flat = keras.layers.Flatten()(pooled)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out", kernel_initializer="ones")(flat))
    image = np.array([[1, 1, 0, 2], [1, 1, 0, 0], [3, 0, 5, 5], [0, 0, 5, 5]], np.float32)[None, :, :, None]
    results = [LRPExplainer(model, "epsilon", jit_compile=jit, epsilon=0.0)(image, 0) for jit in (True, False)]
    np.testing.assert_allclose(results[0].relevance, results[1].relevance, rtol=1e-6)
    relevance = results[1].relevance[0, :, :, 0]
    # Each window's relevance (its max) goes to its winners, split equally between ties.
    np.testing.assert_allclose(relevance, [[0.25, 0.25, 0, 2], [0.25, 0.25, 0, 0], [3, 0, 1.25, 1.25],
                                           [0, 0, 1.25, 1.25]])


def test_a_nested_backbone_and_head_explain_as_the_flat_model(biased_net, face_images):
    # The backbone (conv1..drop7) as a model of its own, inside a model that adds the head.
    backbone = keras.Model(biased_net.inputs, biased_net.get_layer("drop7").output, name="backbone")
    inputs = keras.Input((227, 227, 3), name="photo")
    fc8 = keras.layers.Dense(8, name="fc8")
    nested = keras.Model(inputs, keras.layers.Softmax(name="prob")(fc8(backbone(inputs))), name="nested")
    fc8.set_weights(biased_net.get_layer("fc8").get_weights())
    for composite in ("alpha2beta1", "epsilon_gamma_box", "epsilon_plus_flat"):
        flat = LRPExplainer(biased_net, composite)(face_images[:2], [0, 3])
        inner = LRPExplainer(nested, composite)(face_images[:2], [0, 3])
        np.testing.assert_allclose(inner.scores, flat.scores, rtol=1e-6)
        assert np.abs(inner.relevance - flat.relevance).max() <= 1e-6 * np.abs(flat.relevance).max(), composite
        np.testing.assert_allclose(inner.outputs["3"], flat.outputs["15-20"], rtol=1e-6)


def test_a_layer_type_is_explained_once_an_adapter_says_how():
    from psyattr.lrp import Identity, LayerAdapter, register_adapter
    from psyattr.lrp.adapters import ADAPTERS

    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(Doubling(name="double")(hidden)))
    with pytest.raises(LRPError, match="'double' \\(Doubling\\)"):
        LRPExplainer(model, "epsilon", jit_compile=False)
    register_adapter(LayerAdapter(Doubling, Identity(), sign_preserving=True))
    try:
        x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        explanation = LRPExplainer(model, "epsilon", jit_compile=False)(x, 1)
        # Doubling is linear: relevance still sums to the score (up to the biases' share, zero here).
        assert explanation.relevance.shape == (3, 4) and np.isfinite(explanation.relevance).all()
    finally:
        ADAPTERS[:] = [a for a in ADAPTERS if a.layer_type is not Doubling]
