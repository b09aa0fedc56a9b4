"""Models with random weights for the export and serving tests, and what in-process Keras says about them."""

from __future__ import annotations

import keras
import numpy as np

from psyattr.lrp import LRPExplainer
from psyattr.models.regressor import attribute_scores_layer, build_attribute_regressor
from tests.test_lrp_explainer import random_net, spread_head

ATTRIBUTES = ["happy", "attractive"]
SCALES = [(1.0, 9.0), (0.0, 100.0)]
REGRESSOR_KEYS = {"score_happy", "score_attractive", "rating_happy", "rating_attractive"}
GENDER_KEYS = {"prob_male", "prob_female", "logit_male", "logit_female"}
EXPLAIN_EXTRA_KEYS = {"target", "target_score", "heatmap"}


def random_regressor(seed: int, images: np.ndarray, mode: str = "dense") -> keras.Model:
    """An attribute regressor on a random age net, its head scaled so that `images` score across (0, 1)."""
    model = build_attribute_regressor(random_net("age", seed, zero_bias=False), ATTRIBUTES, SCALES, mode,
                                      initial_scores=[0.4, 0.6])
    spread_head(model, images, 0.25, seed=seed)
    return model


def expected_predictions(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """`serving_default` computed by hand with in-process Keras."""
    outputs = np.asarray(model(images, training=False))
    explainer = LRPExplainer(model, "alpha2beta1", jit_compile=False)
    try:
        layer = attribute_scores_layer(model)
    except ValueError:
        logits = explainer.scores(images)
        return {**{f"prob_{n}": outputs[:, i] for i, n in enumerate(explainer.output_names)},
                **{f"logit_{n}": logits[:, i] for i, n in enumerate(explainer.output_names)}}
    ratings = np.asarray(layer.to_rating_scale(outputs))
    return {**{f"score_{n}": outputs[:, i] for i, n in enumerate(layer.output_names)},
            **{f"rating_{n}": ratings[:, i] for i, n in enumerate(layer.output_names)}}


def expected_explanations(model: keras.Model, images: np.ndarray, targets, xla: bool = False
                          ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Explained output names, their scores and the heatmaps from the in-process LRPExplainer.

    `explain` is compared with the explainer without XLA and `explain_xla` with it: on some images the two
    differ by 1e-3 of the heatmap's range (in process too), so each is held to its own counterpart.
    """
    explainer = LRPExplainer(model, "alpha2beta1", jit_compile=xla)
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in targets]
    resolved = [None if t == "" else int(t) if t.isdigit() else t for t in texts]
    indices = np.concatenate([explainer.resolve_targets(t, 1, images[i:i + 1]) for i, t in enumerate(resolved)])
    explanation = explainer(images, indices)
    scores, relevance = explanation.scores, explanation.relevance
    return [explainer.output_names[i] for i in indices], scores, relevance.sum(axis=-1)


def assert_heatmaps_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Heatmaps agree to `rtol` of their largest magnitude (relevance has no natural per-pixel scale)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.abs(expected).max() > 0
    for a, e in zip(actual, expected):
        assert np.abs(a - e).max() <= rtol * np.abs(e).max(), np.abs(a - e).max() / np.abs(e).max()


def assert_predictions_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The same output names, and values within 1e-5 relative."""
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def framed_inputs(paths, framing_record: dict | None) -> np.ndarray:
    """The model inputs of photo files framed as a served model's export records, as the client frames them."""
    from psyattr.faces import Framing, frame_file

    assert framing_record is not None, "the export records no framing"
    framing = Framing.from_json(framing_record)
    return np.stack([frame_file(p, framing).model_input() for p in paths])


def framed_pngs(images: np.ndarray) -> np.ndarray:
    """Model inputs `(N, 227, 227, 3)` (whole pixel values) as PNG files of framed photos: the 256 px frame around them."""
    import io

    from PIL import Image

    offset = (256 - 227) // 2
    frames = np.pad(np.asarray(images).astype(np.uint8), ((0, 0), (offset, 256 - 227 - offset),
                                                          (offset, 256 - 227 - offset), (0, 0)), mode="edge")
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return np.array(encoded, dtype=object)
