"""Each LRP rule against a slow NumPy matrix-form reference, on small Dense and Conv2D layers."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from psyattr.lrp.graph import _linear_apply
from psyattr.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, LinearOp, Pass, WSquare, ZBox, ZPlus

LOW, HIGH = -1.5, 2.0


def conv_matrix(kernel: np.ndarray, height: int, width: int, stride: int, padding: str):
    """The dense (inputs, outputs) matrix of a 2-D convolution, and which entries are real connections."""
    kh, kw, channels, filters = kernel.shape
    if padding == "valid":
        out_h, out_w, top, left = (height - kh) // stride + 1, (width - kw) // stride + 1, 0, 0
    else:
        out_h, out_w = -(-height // stride), -(-width // stride)
        top = max((out_h - 1) * stride + kh - height, 0) // 2
        left = max((out_w - 1) * stride + kw - width, 0) // 2
    matrix = np.zeros((height * width * channels, out_h * out_w * filters))
    connected = np.zeros_like(matrix, dtype=bool)
    for oh, ow, f, i, j, c in itertools.product(range(out_h), range(out_w), range(filters), range(kh), range(kw),
                                                range(channels)):
        ih, iw = oh * stride + i - top, ow * stride + j - left
        if 0 <= ih < height and 0 <= iw < width:
            row, col = (ih * width + iw) * channels + c, (oh * out_w + ow) * filters + f
            matrix[row, col] = kernel[i, j, c, f]
            connected[row, col] = True
    return matrix, connected, (out_h, out_w, filters)


def stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference(rule, a, w, b, r, connected):
    """Matrix-form LRP: a (inputs,), w (inputs, outputs), b (outputs,), r (outputs,)."""
    contributions = a[:, None] * w
    z = contributions.sum(0) + b
    if isinstance(rule, Epsilon):
        return (contributions / stab(z, rule.epsilon) * r).sum(1)
    if isinstance(rule, AlphaBeta):
        pos, neg = np.maximum(contributions, 0), np.minimum(contributions, 0)
        z_pos, z_neg = pos.sum(0) + np.maximum(b, 0), neg.sum(0) + np.minimum(b, 0)
        return (rule.alpha * pos / stab(z_pos) * r - rule.beta * neg / stab(z_neg) * r).sum(1)
    if isinstance(rule, ZBox):
        low, high = np.full_like(a, rule.low[0]), np.full_like(a, rule.high[0])
        d = contributions - low[:, None] * np.maximum(w, 0) - high[:, None] * np.minimum(w, 0)
        return (d / stab(d.sum(0)) * r).sum(1)
    if isinstance(rule, Flat):
        share = connected.astype(float)
        return (share / stab(share.sum(0)) * r).sum(1)
    if isinstance(rule, WSquare):
        return (w**2 / stab((w**2).sum(0)) * r).sum(1)
    if isinstance(rule, Gamma):
        g = rule.gamma
        up = np.maximum(a, 0)[:, None] * (w + g * np.maximum(w, 0)) + np.minimum(a, 0)[:, None] * (w + g * np.minimum(w, 0))
        down = np.maximum(a, 0)[:, None] * (w + g * np.minimum(w, 0)) + np.minimum(a, 0)[:, None] * (w + g * np.maximum(w, 0))
        z_up, z_down = up.sum(0) + b + g * np.maximum(b, 0), down.sum(0) + b + g * np.minimum(b, 0)
        return (up / stab(z_up) * np.where(z > 0, r, 0) + down / stab(z_down) * np.where(z < 0, r, 0)).sum(1)
    raise AssertionError(rule)


RULES = [Epsilon(1e-6), Epsilon(0.5), AlphaBeta(2, 1), AlphaBeta(3, 2), ZPlus(), ZBox(LOW, HIGH), Flat(), WSquare(),
         Gamma(0.25), Gamma(1.0)]


def run_rule(rule, layer, a, r, nonnegative):
    op = LinearOp(_linear_apply(layer), layer.kernel.value, layer.bias.value, nonnegative)
    a = tf.constant(a, tf.float32)
    z = op.forward(a)
    return rule(op, a, z, tf.constant(r, tf.float32)).numpy()


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("nonnegative", [False, True])
def test_dense_rule_matches_matrix_form(rule, nonnegative):
    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(5)
    layer.build((None, 7))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=5)
    layer.set_weights([w.astype("float32"), b.astype("float32")])
    a = rng.uniform(LOW, HIGH, size=7)
    if nonnegative:
        a = np.maximum(a, 0)
    r = rng.normal(size=5)
    got = run_rule(rule, layer, a[None], r[None], nonnegative)[0]
    want = reference(rule, a.astype("float32").astype(float), layer.get_weights()[0].astype(float),
                     layer.get_weights()[1].astype(float), r, np.ones((7, 5), bool))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "valid"), (2, "same")])
def test_conv_rule_matches_matrix_form(rule, stride, padding):
    rng = np.random.default_rng(1)
    layer = keras.layers.Conv2D(3, 3, strides=stride, padding=padding)
    layer.build((None, 6, 6, 2))
    kernel, bias = rng.normal(size=(3, 3, 2, 3)).astype("float32"), rng.normal(size=3).astype("float32")
    layer.set_weights([kernel, bias])
    a = rng.uniform(LOW, HIGH, size=(6, 6, 2)).astype("float32")
    matrix, connected, out_shape = conv_matrix(kernel.astype(float), 6, 6, stride, padding)
    r = rng.normal(size=out_shape)
    got = run_rule(rule, layer, a[None], r[None], nonnegative=False)[0]
    want = reference(rule, a.ravel().astype(float), matrix, np.tile(bias.astype(float), out_shape[0] * out_shape[1]),
                     r.ravel(), connected).reshape(a.shape)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_pass_hands_relevance_on_and_refuses_a_shape_change():
    layer = keras.layers.Dense(3)
    layer.build((None, 3))
    r = np.arange(3.0)[None]
    assert np.array_equal(run_rule(Pass(), layer, np.ones((1, 3)), r, False), r)
    layer4 = keras.layers.Dense(4)
    layer4.build((None, 3))
    with pytest.raises(ValueError, match="Pass needs equal input and output shapes"):
        run_rule(Pass(), layer4, np.ones((1, 3)), np.ones((1, 4)), False)


def test_rule_arguments_are_validated():
    with pytest.raises(ValueError, match=r"alpha - beta = 1 .* AlphaBeta.from_paper"):
        AlphaBeta(2, -1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        AlphaBeta(0, -1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        Epsilon(-0.1)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Gamma(-1)
    with pytest.raises(ValueError, match="low bound must be below"):
        ZBox(1.0, 0.0)
    with pytest.raises(ValueError, match="both low and high"):
        ZBox(low=0.0)


def test_paper_form_maps_to_the_modern_rule():
    assert AlphaBeta.from_paper(2, -1) == AlphaBeta(2, 1)
    assert vars(AlphaBeta.from_paper(1, 0)) == vars(ZPlus())
    with pytest.raises(ValueError, match="alpha \\+ beta = 1"):
        AlphaBeta.from_paper(2, 1)
