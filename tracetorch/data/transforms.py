"""Image transforms for data pipelines, with torchvision's semantics.

An image is either a uint8 numpy array, H x W or H x W x C (standing in for a
PIL image, as the datasets return it), or a tracetorch tensor (..., H, W),
usually the float C x H x W that ``ToTensor`` makes. Geometric transforms
return the kind of image they were given.

Geometry runs in numpy on the image array: these transforms run per sample
in the loader, not in compiled code, so tensors that go through them leave
the autograd graph (flips excepted). Randomness comes from tracetorch's
default generator (never numpy's global RNG), so a pipeline is reproducible
under ``tt.manual_seed`` and each DataLoader worker, seeded differently,
augments differently. Parameters follow torchvision's distributions; a
transform that needs several numbers draws them with one ``rand`` call,
since a generator call costs far more than the numbers themselves.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Callable, Sequence

import numpy as np

from .. import dtypes as D
from ..creation import as_tensor, from_numpy
from ..random import rand
from ..tensor import Tensor

__all__ = ["Compose", "Lambda", "ToTensor", "Normalize", "RandomHorizontalFlip", "RandomVerticalFlip", "Pad",
           "CenterCrop", "RandomCrop", "RandomAffine", "RandomRotation", "pad", "crop", "affine"]


# ----------------------------------------------------------------- image access
def _planes(img):
    """The image as a numpy array (..., H, W) and a function turning a result back into img's kind.

    The rebuilt image is always a fresh array: a crop of the whole image must
    not alias its input. A cuda tensor is worked on as its host copy and
    rebuilt on its device, as torchvision's transforms keep a tensor's device.
    """
    if isinstance(img, Tensor):
        if img.dim() < 2:
            raise ValueError(f"expected a tensor image (..., H, W), got shape {tuple(img.shape)}")
        dtype, device = img.dtype, img.device
        return img.detach().cpu().numpy(), \
            lambda out: as_tensor(np.array(out, order="C"), dtype=dtype).to(device)
    if isinstance(img, np.ndarray):
        if img.ndim == 2:
            return img, lambda out: np.array(out, order="C")
        if img.ndim == 3:  # H x W x C -> C x H x W view
            return np.moveaxis(img, -1, 0), lambda out: np.array(np.moveaxis(out, 0, -1), order="C")
        raise ValueError(f"expected a numpy image H x W or H x W x C, got shape {img.shape}")
    raise TypeError(f"img should be a numpy array (H x W [x C]) or a tracetorch Tensor (..., H, W); "
                    f"got {type(img).__name__}")


def _image_size(img) -> tuple[int, int]:
    """(height, width)."""
    planes, _ = _planes(img)
    return planes.shape[-2], planes.shape[-1]


def _fill_value(fill, planes: np.ndarray):
    """A scalar, or per-channel values shaped to broadcast over (C, H, W)."""
    if fill is None:
        return 0
    if isinstance(fill, numbers.Number):
        return fill
    values = np.asarray(fill, dtype=np.float64).ravel()
    if values.size == 1:
        return values[0]
    if planes.ndim < 3 or planes.shape[-3] != values.size:
        raise ValueError(f"fill has {values.size} values but the image has shape {planes.shape} "
                         f"(channels first)")
    return values.reshape(-1, 1, 1)


def _size_pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if isinstance(size, Sequence) and len(size) == 1:
        return int(size[0]), int(size[0])
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"{name}: please provide only two dimensions (h, w) for size, got {size}")


def _padding_ltrb(padding) -> tuple[int, int, int, int]:
    """torchvision's padding forms: p, (p,), (left/right, top/bottom), (left, top, right, bottom)."""
    if isinstance(padding, numbers.Number):
        padding = (padding,)
    if not isinstance(padding, Sequence) or len(padding) not in (1, 2, 4):
        raise ValueError(f"Padding must be an int or a 1, 2, or 4 element tuple, not {padding!r}")
    p = [int(v) for v in padding]
    if any(v < 0 for v in p):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    if len(p) == 1:
        return p[0], p[0], p[0], p[0]
    if len(p) == 2:
        return p[0], p[1], p[0], p[1]
    return p[0], p[1], p[2], p[3]


_PAD_MODES = {"constant", "edge", "reflect", "symmetric"}


def _pad_planes(planes: np.ndarray, ltrb, fill, padding_mode: str) -> np.ndarray:
    left, top, right, bottom = ltrb
    if padding_mode != "constant":
        widths = [(0, 0)] * (planes.ndim - 2) + [(top, bottom), (left, right)]
        return np.pad(planes, widths, mode=padding_mode)
    h, w = planes.shape[-2:]
    out = np.empty(planes.shape[:-2] + (h + top + bottom, w + left + right), planes.dtype)
    out[...] = _fill_value(fill, planes)
    out[..., top:top + h, left:left + w] = planes
    return out


def pad(img, padding, fill=0, padding_mode: str = "constant"):
    """Pad the borders (``padding`` in torchvision's forms) with ``fill`` or by edge/reflect/symmetric."""
    if padding_mode not in _PAD_MODES:
        raise ValueError(f"Padding mode should be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
    planes, rebuild = _planes(img)
    return rebuild(_pad_planes(planes, _padding_ltrb(padding), fill, padding_mode))


def crop(img, top: int, left: int, height: int, width: int):
    """The window [top, top + height) x [left, left + width); it must lie inside the image."""
    planes, rebuild = _planes(img)
    h, w = planes.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop window (top={top}, left={left}, height={height}, width={width}) is outside "
                         f"the {h} x {w} image")
    return rebuild(planes[..., top:top + height, left:left + width])


def _inverse_affine_matrix(center, angle: float, translate, scale: float, shear) -> list[float]:
    """torchvision's matrix taking an output pixel position to the input position it samples.

    The forward map is T * C * R(angle) * S(scale) * Shear * C^-1, with y
    pointing down, so a positive angle turns the picture clockwise.
    """
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


@functools.lru_cache(maxsize=16)
def _pixel_centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(y + 0.5, x + 0.5) grids; cached because every sample of a dataset has the same size."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _warp_nearest(planes: np.ndarray, matrix, fill) -> np.ndarray:
    """Inverse-map every output pixel centre through ``matrix`` and take the input
    pixel it lands in (PIL's nearest rule); pixels landing outside get ``fill``."""
    h, w = planes.shape[-2:]
    ys, xs = _pixel_centres(h, w)
    a, b, c, d, e, f = matrix
    src_x = np.floor(a * xs + b * ys + c).astype(np.intp)
    src_y = np.floor(d * xs + e * ys + f).astype(np.intp)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    out = np.empty_like(planes)
    out[...] = _fill_value(fill, planes)
    out[..., inside] = planes[..., src_y[inside], src_x[inside]]
    return out


def affine(img, angle: float, translate, scale: float, shear, fill=0, center=None):
    """Rotate (degrees, clockwise), scale, shear and translate (pixels) about ``center``
    (default: the image centre), with nearest-neighbour sampling."""
    planes, rebuild = _planes(img)
    h, w = planes.shape[-2:]
    if isinstance(shear, numbers.Number):
        shear = (shear, 0.0)
    center = (w * 0.5, h * 0.5) if center is None else center
    matrix = _inverse_affine_matrix(center, angle, translate, scale, shear)
    return rebuild(_warp_nearest(planes, matrix, fill))


def _uniform(low: float, high: float, u: float | None = None) -> float:
    """U[low, high) from a [0, 1) draw ``u`` (by default one drawn off the default generator)."""
    return low + (high - low) * (float(rand(1)) if u is None else u)


# ----------------------------------------------------------------- transforms
class Compose:
    """Apply transforms one after another."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t}" for t in self.transforms)
        return f"{type(self).__name__}({body}\n)"


class Lambda:
    """A user function as a transform."""

    def __init__(self, lambd: Callable):
        if not callable(lambd):
            raise TypeError(f"Argument lambd should be callable, got {type(lambd).__name__}")
        self.lambd = lambd

    def __call__(self, img):
        return self.lambd(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToTensor:
    """numpy H x W [x C] -> tensor C x H x W; uint8 is scaled to [0, 1] in the default
    float dtype, other dtypes keep their values and dtype."""

    def __call__(self, pic) -> Tensor:
        if not isinstance(pic, np.ndarray):
            raise TypeError(f"pic should be a numpy array (stand-in for a PIL Image). Got {type(pic)}")
        if pic.ndim not in (2, 3):
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        chw = np.ascontiguousarray((pic[:, :, None] if pic.ndim == 2 else pic).transpose(2, 0, 1))
        if chw.dtype != np.uint8:
            return from_numpy(chw)
        dt = D.get_default_dtype()
        if dt is D.float32 or dt is D.float64:  # straight in numpy: this runs once per sample
            return from_numpy(chw.astype(dt.np) / dt.np.type(255))
        return from_numpy(chw).to(dt).div(255)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize:
    """(x - mean[c]) / std[c] per channel of a float tensor (..., C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        self.mean, self.std, self.inplace = mean, std, inplace
        self._stats = {}  # cache of the mean/std tensors, keyed by dtype and device

    def _mean_std(self, dtype, device):
        if (dtype, device) not in self._stats:
            mean = as_tensor(np.asarray(self.mean, dtype=np.float64), dtype=dtype).to(device)
            std = as_tensor(np.asarray(self.std, dtype=np.float64), dtype=dtype).to(device)
            if bool((std == 0).any()):
                raise ValueError(f"std evaluated to zero after conversion to {dtype}, leading to division "
                                 f"by zero.")
            if mean.dim() == 1:
                mean = mean.reshape(-1, 1, 1)
            if std.dim() == 1:
                std = std.reshape(-1, 1, 1)
            self._stats[dtype, device] = mean, std
        return self._stats[dtype, device]

    def __call__(self, tensor: Tensor) -> Tensor:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"Input tensor should be a tracetorch tensor. Got {type(tensor)}.")
        if not tensor.is_floating_point():
            raise TypeError(f"Input tensor should be a float tensor. Got {tensor.dtype}.")
        if tensor.dim() < 3:
            raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W). Got "
                             f"tensor.size() = {tuple(tensor.shape)}.")
        mean, std = self._mean_std(tensor.dtype, tensor.device)
        if self.inplace:
            return tensor.sub_(mean).div_(std)
        return (tensor - mean) / std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img):
        if float(rand(1)) < self.p:
            return img.flip(-1) if isinstance(img, Tensor) else np.ascontiguousarray(img[:, ::-1])
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img):
        if float(rand(1)) < self.p:
            return img.flip(-2) if isinstance(img, Tensor) else np.ascontiguousarray(img[::-1])
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Pad:
    """Pad the borders; see ``pad``."""

    def __init__(self, padding, fill=0, padding_mode: str = "constant"):
        _padding_ltrb(padding)
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"Padding mode should be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
        self.padding, self.fill, self.padding_mode = padding, fill, padding_mode

    def __call__(self, img):
        return pad(img, self.padding, self.fill, self.padding_mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, fill={self.fill}, padding_mode={self.padding_mode})"


class CenterCrop:
    """The central (h, w) window, zero-padding first where the image is smaller."""

    def __init__(self, size):
        self.size = _size_pair(size, "CenterCrop")

    def __call__(self, img):
        th, tw = self.size
        h, w = _image_size(img)
        if th > h or tw > w:
            dh, dw = max(th - h, 0), max(tw - w, 0)
            img = pad(img, (dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2))
            h, w = _image_size(img)
        return crop(img, int(round((h - th) / 2.0)), int(round((w - tw) / 2.0)), th, tw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomCrop:
    """A random (h, w) window, after optional padding (torchvision's order of draws)."""

    def __init__(self, size, padding=None, pad_if_needed: bool = False, fill=0, padding_mode: str = "constant"):
        self.size = _size_pair(size, "RandomCrop")
        if padding is not None:
            _padding_ltrb(padding)
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"Padding mode should be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
        self.padding, self.pad_if_needed, self.fill, self.padding_mode = padding, pad_if_needed, fill, padding_mode

    @staticmethod
    def get_params(img, output_size) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random window of ``output_size`` in ``img``."""
        h, w = _image_size(img)
        th, tw = output_size
        if h < th or w < tw:
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(h, w)}")
        if h == th and w == tw:
            return 0, 0, h, w
        u_i, u_j = rand(2, dtype=D.float64).tolist()  # one generator call; randint's own rule
        return int(u_i * (h - th + 1)), int(u_j * (w - tw + 1)), th, tw

    def __call__(self, img):
        if self.padding is not None:
            img = pad(img, self.padding, self.fill, self.padding_mode)
        h, w = _image_size(img)
        th, tw = self.size
        if self.pad_if_needed and w < tw:
            img = pad(img, (tw - w, 0), self.fill, self.padding_mode)
        if self.pad_if_needed and h < th:
            img = pad(img, (0, th - h), self.fill, self.padding_mode)
        return crop(img, *self.get_params(img, self.size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


def _range(value, name: str, center: float = 0.0) -> tuple[float, float]:
    """A number v means (center - v, center + v); a pair is taken as is."""
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f"If {name} is a single number, it must be positive.")
        return float(center - value), float(center + value)
    if len(value) != 2:
        raise ValueError(f"{name} should be a single number or a sequence of length 2, got {value!r}")
    return float(value[0]), float(value[1])


class RandomAffine:
    """Random rotation (degrees, clockwise for positive angles, as torchvision's
    ``affine``), translation (fractions of width/height), scale and shear,
    sampled with nearest neighbour; uncovered pixels get ``fill``."""

    def __init__(self, degrees, translate=None, scale=None, shear=None, interpolation="nearest", fill=0,
                 center=None):
        self.degrees = _range(degrees, "degrees")
        if translate is not None:
            if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
                raise ValueError(f"translate should be a pair of values between 0 and 1, got {translate!r}")
        if scale is not None:
            if len(scale) != 2 or any(s <= 0 for s in scale):
                raise ValueError(f"scale values should be positive, got {scale!r}")
        if shear is not None:
            if isinstance(shear, numbers.Number):
                shear = _range(shear, "shear")
            elif len(shear) not in (2, 4):
                raise ValueError(f"shear should be a number or a sequence of 2 or 4 values, got {shear!r}")
        if str(getattr(interpolation, "value", interpolation)).lower() != "nearest":
            raise NotImplementedError(f"RandomAffine: only nearest interpolation is implemented, "
                                      f"got {interpolation!r}")
        self.translate, self.scale, self.shear, self.fill, self.center = translate, scale, shear, fill, center

    @staticmethod
    def get_params(degrees, translate, scale_ranges, shears, img_size):
        """(angle, (tx, ty), scale, (shear_x, shear_y)) drawn like torchvision; img_size is (width, height).

        All uniforms come from one ``rand(k)`` call (one generator call per image
        instead of up to six), in torchvision's order: angle, tx, ty, scale, shears.
        """
        k = 1 + 2 * (translate is not None) + (scale_ranges is not None) + (len(shears) if shears else 0) // 2
        u = iter(rand(k, dtype=D.float64).tolist())
        angle = _uniform(degrees[0], degrees[1], next(u))
        if translate is not None:
            max_dx, max_dy = float(translate[0] * img_size[0]), float(translate[1] * img_size[1])
            tx = int(round(_uniform(-max_dx, max_dx, next(u))))
            ty = int(round(_uniform(-max_dy, max_dy, next(u))))
            translations = (tx, ty)
        else:
            translations = (0, 0)
        scale = _uniform(scale_ranges[0], scale_ranges[1], next(u)) if scale_ranges is not None else 1.0
        shear_x = shear_y = 0.0
        if shears is not None:
            shear_x = _uniform(shears[0], shears[1], next(u))
            if len(shears) == 4:
                shear_y = _uniform(shears[2], shears[3], next(u))
        return angle, translations, scale, (shear_x, shear_y)

    def __call__(self, img):
        h, w = _image_size(img)
        angle, translations, scale, shear = self.get_params(self.degrees, self.translate, self.scale, self.shear,
                                                            (w, h))
        return affine(img, angle, translations, scale, shear, fill=self.fill, center=self.center)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
                f"shear={self.shear}, fill={self.fill})")


class RandomRotation:
    """Rotate by an angle from ``degrees``, counter-clockwise for positive angles
    (torchvision's ``rotate``), about the centre, nearest neighbour."""

    def __init__(self, degrees, interpolation="nearest", expand: bool = False, center=None, fill=0):
        if expand:
            raise NotImplementedError("RandomRotation(expand=True) is not implemented")
        if str(getattr(interpolation, "value", interpolation)).lower() != "nearest":
            raise NotImplementedError(f"RandomRotation: only nearest interpolation is implemented, "
                                      f"got {interpolation!r}")
        self.degrees = _range(degrees, "degrees")
        self.center, self.fill = center, fill

    def __call__(self, img):
        angle = _uniform(*self.degrees)
        return affine(img, -angle, (0, 0), 1.0, (0.0, 0.0), fill=self.fill, center=self.center)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(degrees={self.degrees}, fill={self.fill})"
