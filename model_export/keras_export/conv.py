"""Lowerings of Keras' 2-D convolutions, pooling and zero padding, forward pass and gradient builtin-only.

A trainable kernel is applied as a patch matrix times the kernel (im2col): TFLite's CONV_2D and
DEPTHWISE_CONV_2D are fast only with a constant filter, while products of two variable operands run in
XNNPACK. The gradients are products over the same patches, and the input gradient is ``_col2im``, the
exact adjoint of ``_patches`` (slices become pads, a concat becomes slices). A frozen kernel (a constant)
uses CONV_2D and DEPTHWISE_CONV_2D themselves; the input gradient of a frozen convolution is TRANSPOSE_CONV
with the constant filter, that of a frozen depthwise one a ``_col2im``. Pooling runs as MAX_POOL_2D and
AVERAGE_POOL_2D; their gradients (TensorFlow's MaxPoolGrad and AvgPoolGrad are not builtins) are written
here: the max routes each upstream value to the first maximum of its window, as MaxPoolGrad does.

Every tensor stays at most 4-D, for the older runtimes. Padding follows Keras (TensorFlow's ``SAME``: the
odd padded row or column goes at the bottom or right), and a ``same`` average divides by the number of
elements inside the image, as Keras does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from model_export.keras_export.activations import activate, activation_problems
from model_export.keras_export.registry import Params, config_problems, lowers, weight_problems

Tensor = Any
Pair = tuple[int, int]
FEW_CHANNELS = 4  # below this, a one-hot depthwise convolution extracts patches faster than slices
_LOWEST = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class Window:
    """A window sliding over an ``in_hw`` image, and where each of its ``taps`` reads.

    ``pads`` is the zero padding as ((top, bottom), (left, right)). A strided window reads the padded
    image through a phase grid: the image (cropped or padded at its end) is ``grid`` cells of ``strides``
    pixels each way, and the pixel at row ``i`` of a window is row ``i % stride`` of cell ``i // stride``.
    """

    size: Pair
    strides: Pair
    in_hw: Pair
    out_hw: Pair
    pads: tuple[Pair, Pair]
    grid: Pair

    @property
    def taps(self) -> int:
        return self.size[0] * self.size[1]


def window(in_hw: Pair, size: Pair, strides: Pair, padding: str) -> Window:
    """The window of a Keras layer with this kernel or pool ``size``, ``strides`` and ``padding``."""
    out, pads, grid = [], [], []
    for n, k, s in zip(in_hw, size, strides, strict=True):
        o = -(-n // s) if padding == "same" else (n - k) // s + 1
        total = max((o - 1) * s + k - n, 0)
        out.append(o)
        pads.append((total // 2, total - total // 2))
        grid.append((k - 1) // s + o)
    return Window(size, strides, in_hw, (out[0], out[1]), (pads[0], pads[1]), (grid[0], grid[1]))


def _pad(x: Tensor, pads: tuple[Pair, Pair], fill: float = 0.0) -> Tensor:
    if not any(pads[0] + pads[1]):
        return x
    return tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]], constant_values=fill)


def _crop(x: Tensor, start: Pair, size: Pair) -> Tensor:
    if start == (0, 0) and tuple(x.shape[1:3]) == size:
        return x
    return tf.slice(x, [0, start[0], start[1], 0], [-1, size[0], size[1], -1])


def _to_grid(x: Tensor, w: Window, fill: float) -> Tensor:
    """``x`` padded, then padded or cropped at its end to exactly ``grid * strides`` rows and columns."""
    ends = [w.grid[a] * w.strides[a] - w.pads[a][0] - w.in_hw[a] for a in range(2)]
    kept = (min(w.in_hw[0], w.in_hw[0] + ends[0]), min(w.in_hw[1], w.in_hw[1] + ends[1]))
    x = _crop(x, (0, 0), kept)
    return _pad(x, ((w.pads[0][0], max(ends[0], 0)), (w.pads[1][0], max(ends[1], 0))), fill)


def _from_grid(g: Tensor, w: Window) -> Tensor:
    """The adjoint of ``_to_grid``: the image's part of ``g``, with zeros for the rows ``_to_grid`` cropped."""
    kept = [min(w.in_hw[a], w.grid[a] * w.strides[a] - w.pads[a][0]) for a in range(2)]
    g = _crop(g, (w.pads[0][0], w.pads[1][0]), (kept[0], kept[1]))
    return _pad(g, ((0, w.in_hw[0] - kept[0]), (0, w.in_hw[1] - kept[1])))


def _phases(x: Tensor, w: Window) -> dict[Pair, Tensor]:
    """The grid's ``strides[0] * strides[1]`` phase planes ``(batch, grid_h, grid_w, channels)``."""
    (gh, gw), (sh, sw), c = w.grid, w.strides, x.shape[3]
    if (sh, sw) == (1, 1):
        return {(0, 0): x}
    rows = tf.reshape(x, [-1, gh, sh, gw * sw * c])
    planes = {}
    for a in range(sh):
        row = tf.reshape(tf.slice(rows, [0, 0, a, 0], [-1, gh, 1, -1]), [-1, gh, gw, sw * c])
        for b in range(sw):
            planes[(a, b)] = tf.slice(row, [0, 0, 0, b * c], [-1, gh, gw, c])
    return planes


def _unphases(planes: dict[Pair, Tensor], w: Window) -> Tensor:
    """The adjoint (and inverse) of ``_phases``."""
    (gh, gw), (sh, sw) = w.grid, w.strides
    if (sh, sw) == (1, 1):
        return planes[(0, 0)]
    c = planes[(0, 0)].shape[3]
    rows = [tf.reshape(tf.concat([planes[(a, b)] for b in range(sw)], axis=-1), [-1, gh, 1, gw * sw * c])
            for a in range(sh)]
    return tf.reshape(tf.concat(rows, axis=2), [-1, gh * sh, gw * sw, c])


def _patches(x: Tensor, w: Window) -> Tensor:
    """Every window of ``x`` as rows ``(batch * out_h * out_w, taps * channels)``, ordered (row, column, channel).

    With few channels and equal strides a depthwise convolution by a constant one-hot filter extracts the
    patches fastest; otherwise one slice per tap of the phase planes, and a concat.
    """
    if x.shape[3] < FEW_CHANNELS and w.strides[0] == w.strides[1]:
        return _one_hot_patches(_pad(x, w.pads), w)
    return tf.reshape(tf.concat(_taps(x, w), axis=-1), [-1, w.taps * x.shape[3]])


def _taps(x: Tensor, w: Window, fill: float = 0.0) -> list[Tensor]:
    """What each tap of the window reads, as one ``(batch, out_h, out_w, channels)`` slice of ``x`` per tap;
    ``fill`` is the value of the padding (the lowest float for a max)."""
    planes, (sh, sw) = _phases(_to_grid(x, w, fill), w), w.strides
    return [_crop(planes[(i % sh, j % sw)], (i // sh, j // sw), w.out_hw)
            for i in range(w.size[0]) for j in range(w.size[1])]


def _one_hot_patches(padded: Tensor, w: Window) -> Tensor:
    c, (kh, kw) = padded.shape[3], w.size
    one_hot = np.zeros((kh, kw, c, w.taps), np.float32)
    for i in range(kh):
        for j in range(kw):
            one_hot[i, j, :, i * kw + j] = 1.0
    strides = [1, w.strides[0], w.strides[1], 1]
    stacked = tf.nn.depthwise_conv2d(padded, tf.constant(one_hot), strides, "VALID")
    if c == 1:
        return tf.reshape(stacked, [-1, w.taps])
    # Depthwise output channels are ordered (channel, tap): reorder to (tap, channel).
    stacked = tf.reshape(stacked, [-1, c, w.taps])
    return tf.reshape(tf.transpose(stacked, [0, 2, 1]), [-1, w.taps * c])


def _col2im(taps: list[Tensor], w: Window) -> Tensor:
    """The adjoint of ``_patches``: each tap's ``(batch, out_h, out_w, channels)`` gradient summed back into
    the input positions it read."""
    (oh, ow), (gh, gw), (sh, sw) = w.out_hw, w.grid, w.strides
    placed: dict[Pair, list[Tensor]] = {(a, b): [] for a in range(sh) for b in range(sw)}
    for t, tap in enumerate(taps):
        (u, a), (v, b) = divmod(t // w.size[1], sh), divmod(t % w.size[1], sw)
        placed[(a, b)].append(_pad(tap, ((u, gh - oh - u), (v, gw - ow - v))))
    zeros = tf.zeros_like(placed[(0, 0)][0])
    planes = {phase: (tf.add_n(parts) if len(parts) > 1 else parts[0]) if parts else zeros
              for phase, parts in placed.items()}
    return _from_grid(_unphases(planes, w), w)


def _split_taps(rows: Tensor, w: Window, channels: int) -> list[Tensor]:
    """Rows ``(batch * out_h * out_w, taps * channels)`` as one ``(batch, out_h, out_w, channels)`` per tap."""
    image = tf.reshape(rows, [-1, *w.out_hw, w.taps * channels])
    return [tf.slice(image, [0, 0, 0, t * channels], [-1, -1, -1, channels]) for t in range(w.taps)]


def _constant(t: Tensor) -> np.ndarray | None:
    """The value of a frozen parameter (a constant), or None for a trainable one (a variable)."""
    if isinstance(t, tf.Variable):
        return None
    value = tf.get_static_value(t)
    return None if value is None else np.asarray(value, np.float32)


def _tf_padding(w: Window) -> str:
    """TensorFlow's padding for ``w`` (its ``SAME`` pads as Keras does; no padding at all is ``VALID``)."""
    return "SAME" if any(w.pads[0] + w.pads[1]) else "VALID"


def _image_window(layer: Any, x: Tensor, size: Any, strides: Any) -> Window:
    return window((int(x.shape[1]), int(x.shape[2])), tuple(size), tuple(strides), layer.padding)


# Convolution.

def conv2d(x: Tensor, kernel: Tensor, w: Window) -> Tensor:
    """``x`` convolved with a Keras-layout ``(kh, kw, in, out)`` kernel over window ``w``, no bias."""
    fixed = _constant(kernel)
    if fixed is not None:
        # CONV_2D with a constant filter; TensorFlow's input gradient becomes TRANSPOSE_CONV.
        return tf.nn.conv2d(x, tf.constant(fixed), [1, *w.strides, 1], _tf_padding(w))
    return _im2col_conv(w)(x, kernel)


def _im2col_conv(w: Window) -> Any:
    @tf.custom_gradient
    def conv(x: Tensor, kernel: Tensor) -> tuple[Tensor, Any]:
        channels, filters = x.shape[3], kernel.shape[3]
        patches = _patches(x, w)
        flat_kernel = tf.reshape(kernel, [-1, filters])
        out = tf.reshape(tf.matmul(patches, flat_kernel), [-1, *w.out_hw, filters])

        def grad(upstream: Tensor) -> tuple[Tensor, Tensor]:
            flat = tf.reshape(upstream, [-1, filters])
            d_kernel = tf.reshape(tf.matmul(patches, flat, transpose_a=True), kernel.shape)
            d_patches = tf.matmul(flat, flat_kernel, transpose_b=True)
            return _col2im(_split_taps(d_patches, w, channels), w), d_kernel

        return out, grad

    return conv


def depthwise_conv2d(x: Tensor, kernel: Tensor, w: Window) -> Tensor:
    """``x`` convolved channel by channel with a ``(kh, kw, in, multiplier)`` kernel; channels ordered (in, m)."""
    fixed = _constant(kernel)
    if fixed is not None:
        return _fixed_depthwise(w, fixed)(x)
    return _im2col_depthwise(w)(x, kernel)


def _depthwise_products(patches: Tensor, kernel: Tensor) -> Tensor:
    """``(n, channels * multiplier)`` from patches ``(n, taps, channels)`` and a kernel ``(taps, channels, m)``."""
    if kernel.shape[2] == 1:
        return tf.reduce_sum(patches * tf.reshape(kernel, kernel.shape[:2]), axis=1)
    out = tf.reduce_sum(tf.expand_dims(patches, -1) * kernel, axis=1)
    return tf.reshape(out, [-1, kernel.shape[1] * kernel.shape[2]])


def _depthwise_input_grad(upstream: Tensor, kernel: Tensor, w: Window) -> Tensor:
    taps, channels, multiplier = kernel.shape
    flat = tf.reshape(upstream, [-1, 1, channels, multiplier])
    if multiplier == 1:
        d_patches = tf.reshape(flat, [-1, 1, channels]) * tf.reshape(kernel, [taps, channels])
    else:
        d_patches = tf.reduce_sum(flat * kernel, axis=3)
    return _col2im(_split_taps(d_patches, w, channels), w)


def _im2col_depthwise(w: Window) -> Any:
    @tf.custom_gradient
    def conv(x: Tensor, kernel: Tensor) -> tuple[Tensor, Any]:
        channels, multiplier = kernel.shape[2], kernel.shape[3]
        patches = tf.reshape(_patches(x, w), [-1, w.taps, channels])
        taps_kernel = tf.reshape(kernel, [w.taps, channels, multiplier])
        out = tf.reshape(_depthwise_products(patches, taps_kernel), [-1, *w.out_hw, channels * multiplier])

        def grad(upstream: Tensor) -> tuple[Tensor, Tensor]:
            flat = tf.reshape(upstream, [-1, 1, channels, multiplier])
            d_kernel = tf.reduce_sum(tf.expand_dims(patches, -1) * flat, axis=0)
            d_x = _depthwise_input_grad(upstream, taps_kernel, w)
            return d_x, tf.reshape(d_kernel, kernel.shape)

        return out, grad

    return conv


def _fixed_depthwise(w: Window, kernel: np.ndarray) -> Any:
    taps_kernel = tf.constant(kernel.reshape(w.taps, kernel.shape[2], kernel.shape[3]))

    @tf.custom_gradient
    def conv(x: Tensor) -> tuple[Tensor, Any]:
        # TensorFlow's input gradient, DepthwiseConv2dNativeBackpropInput, is not a builtin.
        out = tf.nn.depthwise_conv2d(x, tf.constant(kernel), [1, *w.strides, 1], _tf_padding(w))

        def grad(upstream: Tensor) -> Tensor:
            return _depthwise_input_grad(upstream, taps_kernel, w)

        return out, grad

    return conv


def _conv_problems(layer: Any) -> list[str]:
    found = config_problems(layer, padding=("valid", "same"), data_format=("channels_last",),
                            dilation_rate=((1, 1),))
    if getattr(layer, "groups", 1) != 1:
        found.append(f"groups={layer.groups}; supported: 1")
    return found + activation_problems(layer) + weight_problems(layer)


def _depthwise_problems(layer: Any) -> list[str]:
    found = _conv_problems(layer)
    if layer.strides[0] != layer.strides[1]:
        found.append(f"strides={tuple(layer.strides)}; supported: the same stride both ways "
                     "(as TensorFlow's depthwise convolution)")
    return found


def _finish(layer: Any, params: Params, y: Tensor) -> Tensor:
    if layer.use_bias:
        y = y + params(layer.bias)
    return activate(layer, y)


@lowers("Conv2D", problems=_conv_problems)
def conv2d_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    w = _image_window(layer, x, layer.kernel_size, layer.strides)
    return _finish(layer, params, conv2d(x, params(layer.kernel), w))


@lowers("DepthwiseConv2D", problems=_depthwise_problems)
def depthwise_conv2d_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    w = _image_window(layer, x, layer.kernel_size, layer.strides)
    return _finish(layer, params, depthwise_conv2d(x, params(layer.kernel), w))


@lowers("SeparableConv2D", problems=_depthwise_problems)
def separable_conv2d_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    """The depthwise convolution, then the pointwise one as a matrix product (FULLY_CONNECTED)."""
    w = _image_window(layer, x, layer.kernel_size, layer.strides)
    y = depthwise_conv2d(x, params(layer.depthwise_kernel), w)
    pointwise = params(layer.pointwise_kernel)
    flat = tf.matmul(tf.reshape(y, [-1, pointwise.shape[2]]), tf.reshape(pointwise, pointwise.shape[2:]))
    return _finish(layer, params, tf.reshape(flat, [-1, *w.out_hw, pointwise.shape[3]]))


# Pooling and padding.

def _pool_problems(layer: Any) -> list[str]:
    return config_problems(layer, padding=("valid", "same"), data_format=("channels_last",))


def _pool_window(layer: Any, x: Tensor) -> Window:
    return _image_window(layer, x, layer.pool_size, layer.strides or layer.pool_size)


@lowers("MaxPooling2D", problems=_pool_problems)
def max_pooling2d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return _max_pool(_pool_window(layer, x), layer.padding.upper())(x)


def _max_pool(w: Window, padding: str) -> Any:
    @tf.custom_gradient
    def pool(x: Tensor) -> tuple[Tensor, Any]:
        top = tf.nn.max_pool2d(x, w.size, w.strides, padding)

        def grad(upstream: Tensor) -> Tensor:
            # Each upstream value goes to the first tap (row-major) that holds the maximum, as MaxPoolGrad does.
            zeros, remaining, taps = tf.zeros_like(upstream), upstream, []
            for t, tap in enumerate(_taps(x, w, _LOWEST)):
                hit = tf.equal(tap, top)
                taps.append(tf.where(hit, remaining, zeros))
                if t + 1 < w.taps:
                    remaining = tf.where(hit, zeros, remaining)
            return _col2im(taps, w)

        return top, grad

    return pool


@lowers("AveragePooling2D", problems=_pool_problems)
def average_pooling2d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return _average_pool(_pool_window(layer, x), layer.padding.upper())(x)


def _window_counts(w: Window) -> np.ndarray:
    """How many pixels of the image (not of the padding) each window covers, shaped ``(1, out_h, out_w, 1)``."""
    inside = np.pad(np.ones(w.in_hw, np.float32), w.pads)
    counts = np.zeros(w.out_hw, np.float32)
    for r in range(w.out_hw[0]):
        for c in range(w.out_hw[1]):
            top, left = r * w.strides[0], c * w.strides[1]
            counts[r, c] = inside[top:top + w.size[0], left:left + w.size[1]].sum()
    return counts.reshape(1, *w.out_hw, 1)


def _average_pool(w: Window, padding: str) -> Any:
    @tf.custom_gradient
    def pool(x: Tensor) -> tuple[Tensor, Any]:
        def grad(upstream: Tensor) -> Tensor:
            share = upstream / tf.constant(_window_counts(w))
            return _col2im([share] * w.taps, w)

        return tf.nn.avg_pool2d(x, w.size, w.strides, padding), grad

    return pool


def _channels_last_problems(layer: Any) -> list[str]:
    return config_problems(layer, data_format=("channels_last",))


@lowers("GlobalAveragePooling2D", problems=_channels_last_problems)
def global_average_pooling2d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    @tf.custom_gradient
    def pool(x: Tensor) -> tuple[Tensor, Any]:
        def grad(upstream: Tensor) -> Tensor:
            share = tf.reshape(upstream, [-1, 1, 1, x.shape[3]]) / float(x.shape[1] * x.shape[2])
            return tf.broadcast_to(share, tf.shape(x))

        return tf.reduce_mean(x, axis=[1, 2], keepdims=layer.keepdims), grad

    return pool(x)


@lowers("GlobalMaxPooling2D", problems=_channels_last_problems)
def global_max_pooling2d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    @tf.custom_gradient
    def pool(x: Tensor) -> tuple[Tensor, Any]:
        top = tf.reduce_max(x, axis=[1, 2], keepdims=True)

        def grad(upstream: Tensor) -> Tensor:
            # As TensorFlow's gradient of a max: shared equally between the tied maxima.
            hits = tf.cast(tf.equal(x, top), x.dtype)
            share = tf.reshape(upstream, [-1, 1, 1, x.shape[3]]) / tf.reduce_sum(hits, axis=[1, 2], keepdims=True)
            return hits * share

        return (top if layer.keepdims else tf.reshape(top, [-1, x.shape[3]])), grad

    return pool(x)


@lowers("ZeroPadding2D", problems=_channels_last_problems)
def zero_padding2d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    (top, bottom), (left, right) = (tuple(int(p) for p in pair) for pair in layer.padding)

    @tf.custom_gradient
    def pad(x: Tensor) -> tuple[Tensor, Any]:
        def grad(upstream: Tensor) -> Tensor:
            return _crop(upstream, (top, left), (x.shape[1], x.shape[2]))

        return _pad(x, ((top, bottom), (left, right))), grad

    return pad(x)
