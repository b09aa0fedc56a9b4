"""A strided convolution rewritten as a stride-1 one over space-to-depth blocks, for cheap vector-Jacobian products.

The input gradient of a stride-4 convolution over three colour channels is the costliest step of LRP's
first layer on a CPU (XLA's transposed convolution vectorises poorly over so few channels). Folding each
s x s block of pixels into the channels gives the same sums as a stride-1 convolution with s*s as many
input channels and a kernel padded to a multiple of s, whose transpose is a well-shaped stride-1 one.
"""

from __future__ import annotations

import tensorflow as tf


def window_padding(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of one spatial axis of a Keras convolution or pooling."""
    if padding == "valid":
        return (size - window) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2


def space_to_depth_conv(a: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
    """`conv2d(a, kernel, stride, padding)` (channels last, no dilation) computed as a stride-1 convolution."""
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    out_h, top, bottom = window_padding(int(a.shape[1]), kh, stride, padding)
    out_w, left, right = window_padding(int(a.shape[2]), kw, stride, padding)
    a = tf.pad(a, [[0, 0], [top, bottom], [left, right], [0, 0]])
    height, width = int(a.shape[1]), int(a.shape[2])
    blocks_h, blocks_w = -(-kh // stride), -(-kw // stride)
    need_h, need_w = stride * (out_h + blocks_h - 1), stride * (out_w + blocks_w - 1)
    # Rows and columns past the last window are never read; missing ones meet zero kernel taps only.
    a = tf.pad(a, [[0, 0], [0, max(need_h - height, 0)], [0, max(need_w - width, 0)], [0, 0]])[:, :need_h, :need_w]
    n = tf.shape(a)[0]
    a = tf.reshape(a, [n, need_h // stride, stride, need_w // stride, stride, cin])
    a = tf.reshape(tf.transpose(a, [0, 1, 3, 2, 4, 5]), [n, need_h // stride, need_w // stride, stride * stride * cin])
    k = tf.pad(kernel, [[0, blocks_h * stride - kh], [0, blocks_w * stride - kw], [0, 0], [0, 0]])
    k = tf.reshape(k, [blocks_h, stride, blocks_w, stride, cin, cout])
    k = tf.reshape(tf.transpose(k, [0, 2, 1, 3, 4, 5]), [blocks_h, blocks_w, stride * stride * cin, cout])
    return tf.nn.conv2d(a, k, 1, "VALID")
