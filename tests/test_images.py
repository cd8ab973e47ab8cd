"""vitlab.images: every bad file is refused with a short message; every mode becomes RGB.

All files are generated here; nothing is read from the real data set.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import normalize
from vitlab.images import MAX_PIXELS, ImageError, load_image, model_view, to_model_input


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=params.pop("format", "PNG"), **params)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gradient(size=(40, 30)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None, None]
    return Image.fromarray(np.concatenate(np.broadcast_arrays(x, y, 255 - x), axis=2))


def jpeg_bytes() -> bytes:
    return png_bytes(gradient((64, 64)), format="JPEG", quality=90)


BAD_FILES = {
    "empty": (lambda: b"", "empty"),
    "random bytes named .jpg": (lambda: np.random.default_rng(0).bytes(4096), "not a recognised image"),
    "truncated jpeg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) * 4 // 5], "truncated or corrupt"),
    "jpeg cut inside its header": (lambda: jpeg_bytes()[:300], "truncated or corrupt"),
    "svg": (lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
    "html": (lambda: b"<!doctype html><html><body>hello</body></html>", "not a recognised image"),
    "eps (never handed to Ghostscript)": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", "not a recognised"),
    "bomb header 100000x100000": (lambda: png_claiming(100_000, 100_000), "too large"),
    "header 8000x6000 (48 MP)": (lambda: png_claiming(8000, 6000), "megapixels"),
    "header 12000x9000 (108 MP: Pillow only warns)": (lambda: png_claiming(12000, 9000), "megapixels"),
    "1x1": (lambda: png_bytes(Image.new("RGB", (1, 1))), "at least 4 pixels"),
    "20000x20": (lambda: png_bytes(Image.new("L", (20000, 20))), "aspect"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_are_refused_with_a_message(tmp_path, name):
    make, message = BAD_FILES[name]
    path = tmp_path / "upload.jpg"
    path.write_bytes(make())
    for source in (path, str(path), path.read_bytes()):
        with pytest.raises(ImageError, match=message) as info:
            load_image(source)
        assert "\n" not in str(info.value) and len(str(info.value)) < 160
        assert str(tmp_path) not in str(info.value)


def test_real_large_1bit_image_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (8000, 6000)).save(path)  # 48 MP, a 6 KB file
    assert 8000 * 6000 > MAX_PIXELS
    with pytest.raises(ImageError, match="megapixels"):
        load_image(path)


def test_missing_file_and_wrong_type():
    with pytest.raises(ImageError, match="no such image file"):
        load_image("/nonexistent/cat.png")
    with pytest.raises(ImageError, match="expected an image"):
        load_image(42)


def rgb_of(image: Image.Image) -> Image.Image:
    out = load_image(png_bytes(image) if image.mode != "CMYK" else png_bytes(image, format="JPEG"))
    assert out.mode == "RGB" and out.size == image.size
    return out


def test_rgba_and_la_are_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = rgb_of(rgba)
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (8, 8), (0, 128))  # black at half opacity
    assert rgb_of(la).getpixel((3, 3)) == (127, 127, 127)


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    p.putpixel((0, 0), 0)
    out = rgb_of(p)
    assert out.getpixel((4, 4)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "RGB", "P"])
def test_plain_modes(mode):
    out = rgb_of(gradient().convert(mode))
    assert np.asarray(out).dtype == np.uint8


def test_sixteen_bit_greyscale_scaled_to_8_bit():
    values = np.array([[0, 257 * 100, 65535, 65535]] * 4, dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    out = rgb_of(image)
    assert [out.getpixel((i, 0))[0] for i in range(3)] == [0, 100, 255]


def test_animated_gif_and_webp_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP"):
        path = tmp_path / f"anim.{fmt.lower()}"
        frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
        with Image.open(path) as check:
            assert check.n_frames == 3
        red, green, blue = np.asarray(load_image(path)).reshape(-1, 3).mean(0)
        assert red > 200 and green < 50 and blue < 50, fmt


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(png_bytes(image, format="JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[:20].mean(), np.asarray(out)[20:].mean()
    assert top > 200 > 50 > bottom  # the white half is on top after rotation


def test_pil_input_is_checked_and_converted():
    assert load_image(gradient().convert("RGBA")).mode == "RGB"
    with pytest.raises(ImageError, match="aspect"):
        load_image(Image.new("RGB", (2100, 100)))


def test_arrays():
    floats = np.random.default_rng(0).random((10, 12, 3))
    assert load_image(floats).size == (12, 10)
    floats[3, 3, 1] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        load_image(floats)
    assert load_image(np.full((8, 8), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((8, 8), 128.0, np.float32)).getpixel((0, 0)) == (128, 128, 128)  # a 0..255 float image
    assert load_image(Image.fromarray(np.full((8, 8), 0.5, np.float32))).getpixel((0, 0)) == (128, 128, 128)  # mode F
    assert load_image(np.ones((8, 8, 1), bool)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((8, 8, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)  # transparent
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((3, 8, 8, 2), np.uint8))


def test_model_view_resizes_shorter_side_then_centre_crops():
    image = Image.new("RGB", (96, 32), (255, 0, 0))
    image.paste((0, 255, 0), (32, 0, 64, 32))  # green centre square
    view = model_view(image, 32)
    assert view.shape == (32, 32, 3) and view.dtype == np.uint8
    assert (view[..., 1] == 255).all()
    big = model_view(gradient((300, 200)), 32)
    assert big.shape == (32, 32, 3)


def test_cifar_sized_input_passes_untouched():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(model_view(Image.fromarray(pixels), 32), pixels)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = to_model_input(Image.fromarray(pixels), 32, mean, std)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    expected = normalize(torch.from_numpy(pixels).permute(2, 0, 1), mean, std)
    assert torch.allclose(x[0], expected)
