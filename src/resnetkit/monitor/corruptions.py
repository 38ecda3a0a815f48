"""Common corruptions of images at five severities, in NumPy, SciPy and scikit-image.

After Hendrycks & Dietterich (ImageNet-C) and Mu & Gilmer (MNIST-C): every corruption takes
``uint8`` images ``(N, C, H, W)`` (before normalisation) and a severity from 1 to 5, and
returns ``uint8`` images of the same shape. Geometric strengths are fractions of the image
side, so a 28-pixel digit and a 224-pixel photo are corrupted alike. Randomness comes only
from the ``numpy.random.Generator`` passed in, so a seed gives the same corrupted set for the
model and its baseline::

    rng = np.random.default_rng(0)
    blurred = corrupt(images, "defocus_blur", 3, rng)   # (N, C, H, W) uint8
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from resnetkit.errors import ConfigError

__all__ = ["CORRUPTIONS", "SEVERITIES", "check_severities", "corrupt"]

SEVERITIES = (1, 2, 3, 4, 5)

Images = np.ndarray  # (N, C, H, W)
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def check_severities(severities: tuple[int, ...] | list[int]) -> None:
    """Refuse severities outside 1-5.

    Raises:
        ConfigError: naming the first bad one.
    """
    for s in severities:
        if s not in SEVERITIES:
            raise ConfigError(f"severity {s} is out of range; severities are 1 to 5")


def _float(images: Images) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> Images:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _per_plane(images: Images, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` on every (H, W) plane of float images."""
    x = _float(images)
    flat = x.reshape(-1, *x.shape[2:])
    return np.stack([fn(p) for p in flat]).reshape(x.shape)


def gaussian_noise(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Additive Gaussian noise, sigma 0.08-0.38 of the range."""
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    x = _float(images)
    return _uint8(x + rng.normal(0.0, sigma, x.shape))


def shot_noise(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Poisson (photon) noise: 60 down to 3 photons at full brightness."""
    photons = (60, 25, 12, 5, 3)[severity - 1]
    return _uint8(rng.poisson(_float(images) * photons) / photons)


def impulse_noise(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Salt-and-pepper noise on 3%-27% of the values."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    out = images.copy()
    hit = rng.random(images.shape)
    out[hit < amount / 2] = 0
    out[(hit >= amount / 2) & (hit < amount)] = 255
    return out


def _disk(radius: float) -> np.ndarray:
    r = max(int(np.ceil(radius)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (xx**2 + yy**2 <= radius**2 + 0.5).astype(np.float32)
    return kernel / kernel.sum()


def defocus_blur(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """A disk blur, radius 4%-12% of the side."""
    side = images.shape[-1]
    radius = (0.04, 0.06, 0.08, 0.1, 0.12)[severity - 1] * side
    kernel = _disk(max(radius, 1.0))
    return _uint8(_per_plane(images, lambda p: ndimage.convolve(p, kernel, mode="reflect")))


def motion_blur(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """A streak blur, 10%-30% of the side, one random direction per image."""
    side = images.shape[-1]
    length = max(round((0.1, 0.15, 0.2, 0.25, 0.3)[severity - 1] * side), 2)
    x = _float(images)
    out = np.empty_like(x)
    for i in range(x.shape[0]):  # one direction per image, as a camera shakes
        line = np.zeros((length * 2 + 1, length * 2 + 1), np.float32)
        line[length, length:] = 1.0  # a streak from the centre, as ImageNet-C's
        kernel = ndimage.rotate(line, rng.uniform(-45, 45), reshape=False, order=1)
        kernel /= kernel.sum()
        for c in range(x.shape[1]):
            out[i, c] = ndimage.convolve(x[i, c], kernel, mode="nearest")
    return _uint8(out)


def brightness(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Brighter by 0.1-0.5 of the range."""
    return _uint8(_float(images) + (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1])


def contrast(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Contrast cut to 40%-5% around each image's mean."""
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    x = _float(images)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _uint8((x - mean) * factor + mean)


def fog(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """A smooth random haze added, then the image rescaled: contrast lost unevenly."""
    strength, smooth = ((0.5, 0.25), (0.75, 0.2), (1.0, 0.15), (1.25, 0.12), (1.5, 0.1))[
        severity - 1
    ]
    x = _float(images)
    n, _, h, w = x.shape
    field = ndimage.gaussian_filter(rng.random((n, 1, h, w)), (0, 0, smooth * h, smooth * w))
    low, high = field.min(axis=(2, 3), keepdims=True), field.max(axis=(2, 3), keepdims=True)
    haze = (field - low) / np.maximum(high - low, 1e-6) * strength
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return _uint8((x + haze) * peak / (peak + strength))


def pixelate(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Down to 60%-25% of the side (averaged), then up again in blocks."""
    from skimage.transform import resize

    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = images.shape[-2:]
    small = (max(int(h * factor), 1), max(int(w * factor), 1))

    def blocky(p: np.ndarray) -> np.ndarray:
        down = resize(p, small, order=1, anti_aliasing=True)
        return np.asarray(resize(down, (h, w), order=0))

    return _uint8(_per_plane(images, blocky))


def jpeg(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """JPEG at quality 25 down to 7."""
    from PIL import Image

    quality = (25, 18, 15, 10, 7)[severity - 1]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        pil = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer)).reshape(hwc.shape)
        out[i] = decoded.transpose(2, 0, 1)
    return out


def _warp(images: Images, matrices: np.ndarray) -> Images:
    """Each image through its 2x3 affine matrix (output → input coordinates), about its
    centre, filled with black; ``matrices`` is ``(N, 2, 3)``."""
    x = _float(images)
    out = np.empty_like(x)
    h, w = x.shape[-2:]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(x.shape[0]):
        linear, shift = matrices[i, :, :2], matrices[i, :, 2]
        offset = centre - linear @ centre + shift
        for c in range(x.shape[1]):
            out[i, c] = ndimage.affine_transform(x[i, c], linear, offset, order=1, cval=0.0)
    return _uint8(out)


def _signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def rotate(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Rotation by 5-30 degrees, either way."""
    degrees = (5.0, 10.0, 15.0, 22.5, 30.0)[severity - 1]
    angles = np.deg2rad(degrees * _signs(len(images), rng))
    cos, sin = np.cos(angles), np.sin(angles)
    matrices = np.zeros((len(images), 2, 3))
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
    return _warp(images, matrices)


def shear_scale(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """A vertical shear of 0.1-0.3 and a zoom in or out by 5%-25%."""
    shear = (0.1, 0.15, 0.2, 0.25, 0.3)[severity - 1]
    scale = (0.95, 0.9, 0.85, 0.8, 0.75)[severity - 1]
    n = len(images)
    grow = rng.random(n) < 0.5  # half the images shrink, half grow
    factors = np.where(grow, 1.0 / scale, scale)
    matrices = np.zeros((n, 2, 3))
    matrices[:, 0, 0] = matrices[:, 1, 1] = 1.0 / factors  # output → input: inverse scale
    matrices[:, 1, 0] = shear * _signs(n, rng) / factors
    return _warp(images, matrices)


def translate(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """A shift by 5%-25% of the side in a random direction."""
    fraction = (0.05, 0.1, 0.15, 0.2, 0.25)[severity - 1]
    n = len(images)
    angle = rng.uniform(0, 2 * np.pi, n)
    side = np.array(images.shape[-2:], dtype=np.float64)
    matrices = np.zeros((n, 2, 3))
    matrices[:, 0, 0] = matrices[:, 1, 1] = 1.0
    matrices[:, 0, 2] = np.round(np.sin(angle) * fraction * side[0])
    matrices[:, 1, 2] = np.round(np.cos(angle) * fraction * side[1])
    return _warp(images, matrices)


def elastic(images: Images, severity: int, rng: np.random.Generator) -> Images:
    """Simard et al.'s elastic deformation: smoothed random displacement fields."""
    alpha, sigma = ((0.1, 0.06), (0.15, 0.06), (0.2, 0.05), (0.25, 0.05), (0.3, 0.045))[
        severity - 1
    ]
    x = _float(images)
    n, c, h, w = x.shape
    out = np.empty_like(x)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(n):
        dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma * h) for _ in range(2))
        # Scale the smoothed field so its largest displacement is alpha of the side.
        norm = max(np.abs(dy).max(), np.abs(dx).max(), 1e-6)
        coords = [yy + dy / norm * alpha * h, xx + dx / norm * alpha * w]
        for ch in range(c):
            out[i, ch] = ndimage.map_coordinates(x[i, ch], coords, order=1, cval=0.0)
    return _uint8(out)


#: Name → corruption, in report order: noise, blur, weather and digital, then geometry.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "brightness": brightness,
    "contrast": contrast,
    "fog": fog,
    "pixelate": pixelate,
    "jpeg": jpeg,
    "rotate": rotate,
    "shear_scale": shear_scale,
    "translate": translate,
    "elastic": elastic,
}


def corrupt(images: Images, name: str, severity: int, rng: np.random.Generator) -> Images:
    """``images`` ``(N, C, H, W)`` uint8 corrupted by ``name`` at ``severity`` (1-5).

    Raises:
        ConfigError: an unknown corruption, a severity outside 1-5, or images that are not
            uint8 ``(N, C, H, W)``.
    """
    if name not in CORRUPTIONS:
        raise ConfigError(f"corruption {name!r} is not known; use {', '.join(CORRUPTIONS)}")
    check_severities([severity])
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ConfigError(
            f"corruptions take uint8 images (N, C, H, W), got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        return images.copy()
    return CORRUPTIONS[name](images, severity, rng)
