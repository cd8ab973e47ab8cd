"""Input images: decode anything a user may send, refuse what is unsafe or meaningless.

Every image that reaches a model (an upload, an API call, a gallery entry) goes
through :func:`load_image`, which returns an 8-bit RGB ``PIL.Image`` or raises
:class:`ImageError` (a ``ValueError``) with a short message fit to show a user.

What is accepted: any raster format Pillow reads except EPS (Pillow hands EPS
to Ghostscript, an external interpreter), in any mode. Conversion to RGB:

- alpha (RGBA, LA, PA, ``P`` or ``L`` with a transparency key) is composited on
  white, so a transparent background does not turn black;
- 16/32-bit greyscale (``I;16*``, ``I``, ``F``) is scaled to 8 bits: ``I;16*``
  and values up to 65535 by 1/257 (full range to full range), values up to 255
  kept as they are, other ranges stretched min..max; floats within [0, 1]
  (float arrays, ``F`` images) are multiplied by 255, other floats rounded and
  treated as integers;
- CMYK, 1-bit, YCbCr and palette images through Pillow's own conversions;
- animated GIF / WebP / APNG: the first frame;
- the EXIF orientation tag is applied (``ImageOps.exif_transpose``).

What is refused, and why (checked on the header, before any pixel is decoded):

- more than ``MAX_PIXELS`` (40 megapixels: above the 12-24 MP of common
  camera photos, and a 32 px model gains nothing from more) or a file above
  ``MAX_FILE_BYTES`` (50 MiB): decoding such a file could take seconds and
  gigabytes (a "decompression bomb" claims huge dimensions in a tiny file);
- a side shorter than ``MIN_SIDE`` (4 px) or an aspect ratio above
  ``MAX_ASPECT`` (20:1): resized to the model's square input, nothing
  recognisable would be left;
- empty files, SVG (vector, not a raster), files that are not images whatever
  their name, and truncated or corrupt files (the decode is forced here, not
  left to fail later), float arrays containing NaN or infinity.

:func:`model_view` and :func:`to_model_input` then show the model what it was
trained on: the shorter side resized to the model's ``image_size`` (bicubic,
antialiased), then the centre square cropped, as torchvision's ``Resize(S)`` +
``CenterCrop(S)``. A CIFAR-sized 32x32 input passes through untouched.

References: Pillow ``Image.open`` / ``DecompressionBombError`` /
``ImageOps.exif_transpose`` (https://pillow.readthedocs.io/); torchvision
``transforms.Resize`` + ``CenterCrop`` (the usual evaluation transform).
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import normalize

MAX_PIXELS = 40_000_000  # refused above this (width x height), before decoding
MAX_FILE_BYTES = 50 * 1024 * 1024  # refused above this file size
MIN_SIDE = 4  # pixels: the shortest side accepted
MAX_ASPECT = 20.0  # longest side / shortest side
# Pillow formats never opened: EPS is rendered by an external Ghostscript process.
REFUSED_FORMATS = frozenset({"EPS"})

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


class ImageError(ValueError):
    """An input image that cannot be used; the message is short and user-facing."""


def load_image(source: ImageSource) -> Image.Image:
    """Decode ``source`` (a path, bytes, PIL image or HxW[xC] array) into an RGB ``PIL.Image``.

    Raises :class:`ImageError` for anything refused (see the module docstring).
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        check_size(source.size)
        return to_rgb(load_first_frame(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        check_bytes(data[:1024], len(data))
        return decode(io.BytesIO(data))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path.name}")
        with open(path, "rb") as file:
            check_bytes(file.read(1024), path.stat().st_size)
            file.seek(0)
            return decode(file)
    raise ImageError(f"expected an image file, bytes, PIL image or array, not {type(source).__name__}")


def check_bytes(head: bytes, size: int) -> None:
    """Refuse empty, oversized and SVG / text inputs from their first bytes."""
    if size == 0:
        raise ImageError("the file is empty")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"the file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # after a UTF-8 BOM and blanks
    if text.startswith(b"<") and b"<svg" in text:
        raise ImageError("SVG (vector) images are not supported: export it as PNG or JPEG")


def check_size(size: tuple[int, int]) -> None:
    """Refuse images by their dimensions alone (read from the header)."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"the image is {width}x{height}: each side needs at least {MIN_SIDE} pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(
            f"the image is {width}x{height}: aspect ratios beyond {MAX_ASPECT:.0f}:1 are refused "
            "(a square crop would keep almost nothing)"
        )


def allowed_formats() -> list[str]:
    Image.init()
    return [name for name in Image.OPEN if name not in REFUSED_FORMATS]


def decode(file: io.BufferedIOBase) -> Image.Image:
    """Open (header only), check the size, then force the decode of the first frame."""
    try:
        image = Image.open(file, formats=allowed_formats())
    except Image.DecompressionBombError:
        raise ImageError(f"the image is too large to decode safely (limit {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image file (is it really a PNG/JPEG/GIF/WebP?)") from None
    except (OSError, ValueError, SyntaxError) as error:  # plugins raise SyntaxError for bad headers
        raise ImageError(f"the image file is truncated or corrupt ({short(error)})") from None
    check_size(image.size)
    return to_rgb(load_first_frame(image))


def load_first_frame(image: Image.Image) -> Image.Image:
    """Decode frame 0 and apply EXIF orientation; decoding errors become ImageError."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise ImageError(f"the image is too large to decode safely (limit {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as error:
        raise ImageError(f"the image file is truncated or corrupt ({short(error)})") from None
    return image


def short(error: BaseException) -> str:
    """The first line of an exception message, without file paths, at most 80 characters."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return array_to_rgb(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageError(f"unsupported colour mode {mode} ({short(error)})") from None


def array_to_rgb(array: np.ndarray, *, sixteen_bit: bool = False) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as an RGB image.

    uint8 is taken as is, bool as black/white, floats in [0, 1] times 255, 16-bit
    data scaled by 1/257, other ranges as described in the module docstring.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {array.shape}")
    check_size((array.shape[1], array.shape[0]))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("the image contains NaN or infinite values")
        if array.min() >= 0.0 and array.max() <= 1.0:
            array = np.round(array * 255).astype(np.uint8)
        else:  # e.g. a float TIFF holding 0..255 or 0..65535 values
            array = scale_integers(np.round(array).astype(np.int64), sixteen_bit)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        array = scale_integers(array.astype(np.int64), sixteen_bit or array.dtype == np.uint16)
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported array type {array.dtype}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))  # uint8: L, RGB or RGBA by shape


def scale_integers(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Integer pixels to uint8: 16-bit full range by 1/257, 0..255 as is, else min..max."""
    low, high = int(values.min()), int(values.max())
    if sixteen_bit or (low >= 0 and 255 < high <= 65535):
        scaled = (values + 128) // 257
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * 255 // max(high - low, 1)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def model_view(image: Image.Image, image_size: int) -> np.ndarray:
    """What the model sees: shorter side resized to ``image_size``, centre crop; uint8 (S, S, 3)."""
    image = image.convert("RGB")
    width, height = image.size
    if min(width, height) != image_size:
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).copy()


def normalize_view(view: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (S, S, 3) to a normalised float (1, 3, S, S) tensor, exactly as training normalises."""
    pixels = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1)  # (3, S, S) uint8
    return normalize(pixels, mean, std).unsqueeze(0)


def to_model_input(image: Image.Image, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The normalised (1, 3, S, S) float tensor of :func:`model_view`."""
    return normalize_view(model_view(image, image_size), mean, std)
