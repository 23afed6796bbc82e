"""tt.data.transforms: values against numpy, geometry against numpy's flips/rotations/slicing,
and reproducibility under tt.manual_seed."""

import numpy as np
import pytest

import tracetorch as tt
from tracetorch.data import transforms as T


def image(h=6, w=6, channels=None, seed=0):
    """A uint8 image whose pixels are all different, so any geometric mix-up shows."""
    rng = np.random.default_rng(seed)
    n = h * w * (channels or 1)
    values = rng.permutation(256)[:n] if n <= 256 else rng.integers(0, 256, n)
    shape = (h, w) if channels is None else (h, w, channels)
    return values.astype(np.uint8).reshape(shape)


def chw_tensor(img):
    """HxW or HxWxC uint8 -> float32 CxHxW tensor (same pixel values)."""
    arr = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return tt.from_numpy(arr.astype(np.float32))


def chw(img):
    return (img[None] if img.ndim == 2 else img.transpose(2, 0, 1)).astype(np.float32)


# ------------------------------------------------------------------ ToTensor / Normalize / Compose
def test_to_tensor_gray_and_color():
    gray = image(4, 5)
    x = T.ToTensor()(gray)
    assert x.shape == (1, 4, 5) and x.dtype == tt.float32
    np.testing.assert_array_equal(x.numpy()[0], gray.astype(np.float32) / np.float32(255))
    color = image(4, 5, channels=3)
    y = T.ToTensor()(color)
    assert y.shape == (3, 4, 5)
    np.testing.assert_array_equal(y.numpy(), color.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    floats = np.linspace(0, 2, 6).reshape(2, 3)
    z = T.ToTensor()(floats)  # only uint8 is rescaled, as in torchvision
    assert z.dtype == tt.float64 and np.array_equal(z.numpy()[0], floats)
    with pytest.raises(TypeError, match="pic should be"):
        T.ToTensor()(tt.zeros(1, 2, 2))


def test_normalize_matches_numpy_per_channel():
    rng = np.random.default_rng(1)
    arr = rng.random((3, 4, 4)).astype(np.float32)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = T.Normalize(mean, std)(tt.from_numpy(arr.copy()))
    ref = (arr.astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert out.dtype == tt.float32
    x = tt.from_numpy(arr.copy())
    same = T.Normalize(mean, std, inplace=True)(x)
    assert same is x and np.allclose(x.numpy(), ref, atol=1e-6)
    batch = T.Normalize(mean, std)(tt.from_numpy(np.stack([arr, arr])))  # (B, C, H, W) works too
    np.testing.assert_allclose(batch.numpy()[1], ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="float tensor"):
        T.Normalize((0,), (1,))(tt.zeros(1, 2, 2, dtype=tt.int64))
    with pytest.raises(ValueError, match="std evaluated to zero"):
        T.Normalize((0,), (0,))(tt.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="C, H, W"):
        T.Normalize((0,), (1,))(tt.zeros(2, 2))


def test_compose_and_lambda():
    pipeline = T.Compose([T.ToTensor(), T.Lambda(lambda x: x * 2), T.Normalize((0.5,), (0.5,))])
    img = image(3, 3)
    expected = (img / 255.0 * 2 - 0.5) / 0.5
    np.testing.assert_allclose(pipeline(img).numpy()[0], expected, rtol=1e-5, atol=1e-6)
    assert "ToTensor" in repr(pipeline)


# ------------------------------------------------------------------ flips
@pytest.mark.parametrize("channels", [None, 3])
def test_horizontal_and_vertical_flip(channels):
    img = image(4, 5, channels)
    assert np.array_equal(T.RandomHorizontalFlip(p=1.0)(img), np.fliplr(img))
    assert np.array_equal(T.RandomVerticalFlip(p=1.0)(img), np.flipud(img))
    assert np.array_equal(T.RandomHorizontalFlip(p=0.0)(img), img)
    x = chw_tensor(img)
    assert np.array_equal(T.RandomHorizontalFlip(p=1.0)(x).numpy(), chw(np.fliplr(img)))
    assert np.array_equal(T.RandomVerticalFlip(p=1.0)(x).numpy(), chw(np.flipud(img)))


def test_random_flip_is_seeded():
    img = image(3, 4)
    flip = T.RandomHorizontalFlip()

    def outcomes(seed):
        tt.manual_seed(seed)
        return [bool(np.array_equal(flip(img), np.fliplr(img))) for _ in range(40)]

    a = outcomes(0)
    assert a == outcomes(0) and a != outcomes(1)
    assert 5 < sum(a) < 35  # both outcomes occur at p = 0.5


# ------------------------------------------------------------------ pad / crop
def test_pad_forms_and_modes():
    img = image(3, 4)
    np.testing.assert_array_equal(T.Pad(1, fill=9)(img), np.pad(img, 1, constant_values=9))
    np.testing.assert_array_equal(T.Pad((2, 1))(img), np.pad(img, ((1, 1), (2, 2))))  # (left/right, top/bottom)
    np.testing.assert_array_equal(T.Pad((1, 2, 3, 0))(img), np.pad(img, ((2, 0), (1, 3))))  # l, t, r, b
    np.testing.assert_array_equal(T.Pad(2, padding_mode="reflect")(img), np.pad(img, 2, mode="reflect"))
    color = image(3, 4, channels=3)
    padded = T.Pad(1, fill=(1, 2, 3))(color)
    assert padded.shape == (5, 6, 3) and padded[0, 0].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(padded[1:-1, 1:-1], color)


def find_windows(big, small):
    """Every (top, left) where `small` sits inside `big` (channels last or none)."""
    h, w = small.shape[:2]
    return [(i, j) for i in range(big.shape[0] - h + 1) for j in range(big.shape[1] - w + 1)
            if np.array_equal(big[i:i + h, j:j + w], small)]


@pytest.mark.parametrize("channels", [None, 2])
def test_random_crop_with_padding_returns_the_drawn_window(channels):
    img = image(6, 7, channels)
    crop = T.RandomCrop((4, 5), padding=2)
    widths = ((2, 2), (2, 2)) + (((0, 0),) if channels else ())
    padded = np.pad(img, widths)
    seen = set()
    for seed in range(25):
        tt.manual_seed(seed)
        out = crop(img)
        tt.manual_seed(seed)
        i, j, h, w = T.RandomCrop.get_params(padded, (4, 5))
        assert (h, w) == (4, 5)
        np.testing.assert_array_equal(out, padded[i:i + h, j:j + w])
        assert (i, j) in find_windows(padded, out)  # an independent check of the offsets
        seen.add((i, j))
    assert len(seen) > 10  # offsets vary with the seed
    assert all(0 <= i <= 6 and 0 <= j <= 6 for i, j in seen)


def test_random_crop_tensor_pad_if_needed_and_center_crop():
    img = image(5, 5)
    x = chw_tensor(img)
    tt.manual_seed(3)
    out = T.RandomCrop(3)(x)
    tt.manual_seed(3)
    i, j, _, _ = T.RandomCrop.get_params(img, (3, 3))
    assert out.shape == (1, 3, 3) and np.array_equal(out.numpy()[0], img[i:i + 3, j:j + 3])
    grown = T.RandomCrop((7, 5), pad_if_needed=True, fill=255)(img)
    # torchvision pads the missing 2 rows on *both* sides, then crops 7 of the 9
    assert grown.shape == (7, 5) and find_windows(np.pad(img, ((2, 2), (0, 0)), constant_values=255), grown)
    np.testing.assert_array_equal(T.CenterCrop(3)(img), img[1:4, 1:4])
    np.testing.assert_array_equal(T.CenterCrop((2, 4))(img), img[2:4, 0:4])  # round((5 - 2) / 2) = 2
    np.testing.assert_array_equal(T.CenterCrop(7)(img), np.pad(img, 1))
    with pytest.raises(ValueError, match="larger than input image"):
        T.RandomCrop(6)(img)


def test_crop_of_the_whole_image_is_a_copy():
    img = image(3, 3)
    out = T.RandomCrop(3)(img)
    out[0, 0] = 0 if img[0, 0] else 1
    assert out[0, 0] != img[0, 0]


# ------------------------------------------------------------------ affine
@pytest.mark.parametrize("size", [5, 6])
def test_affine_rotation_by_90_degrees(size):
    img = image(size, size)
    # torchvision's affine turns clockwise for positive angles (y points down) ...
    np.testing.assert_array_equal(T.RandomAffine((90, 90))(img), np.rot90(img, k=-1))
    np.testing.assert_array_equal(T.RandomAffine((-90, -90))(img), np.rot90(img, k=1))
    np.testing.assert_array_equal(T.RandomAffine((180, 180))(img), np.rot90(img, k=2))
    # ... and its rotate (RandomRotation) counter-clockwise, like np.rot90
    np.testing.assert_array_equal(T.RandomRotation((90, 90))(img), np.rot90(img, k=1))
    color = image(size, size, channels=3)
    np.testing.assert_array_equal(T.RandomAffine((90, 90))(color), np.rot90(color, k=-1, axes=(0, 1)))
    out = T.RandomAffine((90, 90))(chw_tensor(color))
    assert out.dtype == tt.float32 and np.array_equal(out.numpy(), chw(np.rot90(color, k=-1, axes=(0, 1))))


def shifted(img, tx, ty, fill=0):
    """out[y, x] = img[y - ty, x - tx], `fill` where that is outside."""
    out = np.full_like(img, fill)
    h, w = img.shape[:2]
    ys, xs = slice(max(ty, 0), min(h + ty, h)), slice(max(tx, 0), min(w + tx, w))
    out[ys, xs] = img[max(-ty, 0):min(h - ty, h), max(-tx, 0):min(w - tx, w)]
    return out


def test_affine_translation_shifts_by_the_drawn_offsets():
    img = image(8, 10)
    affine = T.RandomAffine(0, translate=(0.3, 0.2), fill=7)
    seen = set()
    for seed in range(20):
        tt.manual_seed(seed)
        out = affine(img)
        tt.manual_seed(seed)
        angle, (tx, ty), scale, shear = T.RandomAffine.get_params((0.0, 0.0), (0.3, 0.2), None, None, (10, 8))
        assert angle == 0 and scale == 1.0 and shear == (0.0, 0.0)
        assert abs(tx) <= 3 and abs(ty) <= 2  # round(U(-0.3 * 10, 3)), round(U(-1.6, 1.6))
        np.testing.assert_array_equal(out, shifted(img, tx, ty, fill=7))
        seen.add((tx, ty))
    assert len(seen) > 4


def test_affine_scale_and_fill_against_an_explicit_inverse_map():
    img = image(6, 6)
    out = T.RandomAffine(0, scale=(2.0, 2.0))(img)
    # output pixel centre p maps back to (p - c) / 2 + c, c = (3, 3); nearest = floor
    for y in range(6):
        for x in range(6):
            sx, sy = int(np.floor((x + 0.5 - 3) / 2 + 3)), int(np.floor((y + 0.5 - 3) / 2 + 3))
            assert out[y, x] == img[sy, sx]
    rotated = T.RandomAffine((45, 45), fill=255)(np.zeros((9, 9), np.uint8))
    assert rotated[0, 0] == rotated[8, 8] == 255 and rotated[4, 4] == 0


def test_affine_is_reproducible_under_manual_seed():
    img = image(12, 12, seed=3)
    affine = T.RandomAffine(30, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10)
    tt.manual_seed(0)
    a = [affine(img) for _ in range(3)]
    tt.manual_seed(0)
    b = [affine(img) for _ in range(3)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError, match="must be positive"):
        T.RandomAffine(-5)
    with pytest.raises(NotImplementedError, match="nearest"):
        T.RandomAffine(5, interpolation="bilinear")
