"""Safe decoding: every allowed format and pixel mode, and every class of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab.config import DecodeLimits
from nsfwlab.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from nsfwlab.imageio import ALLOWED_FORMATS, load_image, sniff_format, to_rgb


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_allowed_format_decodes_to_rgb(rgb: Image.Image, fmt: str) -> None:
    data = _encode(rgb, fmt)
    assert sniff_format(data[:32]) == fmt
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (96, 64)


def test_format_is_decided_by_content_not_name(tmp_path: Path, rgb: Image.Image) -> None:
    png_named_jpg = tmp_path / "really_a_png.jpg"
    png_named_jpg.write_bytes(_encode(rgb, "PNG"))
    np.testing.assert_array_equal(np.asarray(load_image(png_named_jpg)), np.asarray(rgb))
    pdf_named_jpg = tmp_path / "evil.jpg"
    pdf_named_jpg.write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(UnsupportedFormatError, match="PDF"):
        load_image(pdf_named_jpg)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript"),
        (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "EPS"),
        (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        (b"<!DOCTYPE html><html></html>", "HTML"),
        (b"hello, I am a text file\n", "text"),
        (b"PK\x03\x04" + b"\x00" * 30, "ZIP"),
        (b"\x00\x00\x00\x1cftypavif" + b"\x00" * 30, "HEIF/AVIF"),
    ],
)
def test_disallowed_formats_are_refused_by_name(payload: bytes, kind: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=kind.split("/")[0]):
        load_image(payload)


def test_empty_inputs() -> None:
    with pytest.raises(EmptyImageError):
        load_image(b"")
    with pytest.raises(EmptyImageError):
        load_image(io.BytesIO(b""))


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.touch()
    with pytest.raises(EmptyImageError):
        load_image(p)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files_are_refused(rgb: Image.Image, fmt: str) -> None:
    data = _encode(rgb, fmt)
    with pytest.raises(CorruptImageError) as info:  # TruncatedImageError is a CorruptImageError
        load_image(data[: len(data) // 2])
    assert fmt in str(info.value)


def test_truncated_jpeg_is_named_truncated(rgb: Image.Image) -> None:
    data = _encode(rgb, "JPEG")
    with pytest.raises(TruncatedImageError, match="truncated"):
        load_image(data[: len(data) - 200])


def test_garbage_after_a_valid_signature_is_corrupt() -> None:
    rng = np.random.default_rng(2)
    for sig in (b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00", b"BM" + b"\x00" * 16):
        with pytest.raises(CorruptImageError):
            load_image(sig + rng.integers(0, 255, 500, dtype=np.uint8).tobytes())


def test_corrupt_message_names_no_python_object() -> None:
    """Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" is cleaned up."""
    with pytest.raises(CorruptImageError) as info:
        load_image(b"GIF89a\x01\x00")
    assert str(info.value) == "corrupt GIF data: cannot identify image file"


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims another size (a decompression bomb's header)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr_start = 8 + 4  # signature, chunk length
    data[ihdr_start + 4 : ihdr_start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start : ihdr_start + 4 + 13])) & 0xFFFFFFFF
    data[ihdr_start + 17 : ihdr_start + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(("w", "h"), [(20_000, 20_000), (100_000, 100_000), (2**31 - 1, 2**31 - 1)])
def test_pixel_bombs_are_refused_from_the_header(w: int, h: int) -> None:
    with pytest.raises(ImageTooLargeError):
        load_image(_png_with_size(w, h))


def test_the_pixel_cap_is_ours_not_pillows() -> None:
    """Pillow's own limit (2 * Image.MAX_IMAGE_PIXELS = 178,956,970) used to answer first: bombs
    were reported against it, and a max_pixels raised above it could never be honoured."""
    from nsfwlab.imageio import open_image

    with pytest.raises(ImageTooLargeError) as info:
        load_image(_png_with_size(100_000, 100_000))
    assert str(info.value).startswith("100000x100000 = 10000000000 pixels is over the cap of 100000000")
    assert "178956970" not in str(info.value)
    header = _png_with_size(15_000, 13_000)  # 195 Mpx: over Pillow's limit, under the one we set
    with pytest.raises(ImageTooLargeError, match="over the cap of 100000000"):
        open_image(header, DecodeLimits())
    opened = open_image(header, DecodeLimits(max_pixels=250_000_000))  # header only, no pixels
    assert opened.image.size == (15_000, 13_000) and opened.format == "PNG"


def test_gif_logical_screen_bomb_is_refused() -> None:
    data = bytearray(_encode(Image.new("P", (2, 2)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    with pytest.raises(ImageError):  # refused, either as too large or as corrupt
        load_image(bytes(data))


def test_pixel_cap_is_configurable(rgb: Image.Image) -> None:
    data = _encode(rgb, "PNG")
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_image(data, DecodeLimits(max_pixels=1000))
    assert load_image(data, DecodeLimits(max_pixels=96 * 64)).size == (96, 64)


def test_byte_cap(tmp_path: Path, rgb: Image.Image) -> None:
    data = _encode(rgb, "BMP")
    p = tmp_path / "big.bmp"
    p.write_bytes(data)
    limits = DecodeLimits(max_bytes=len(data) - 1)
    for source in (data, p, io.BytesIO(data)):
        with pytest.raises(ImageTooLargeError, match="bytes"):
            load_image(source, limits)  # type: ignore[arg-type]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_text_mode_file_object_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("abc")
    with p.open("r") as fh, pytest.raises(ImageError, match="binary"):
        load_image(fh)  # type: ignore[arg-type]


def test_unsupported_input_type() -> None:
    with pytest.raises(ImageError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]


# -- pixel modes --------------------------------------------------------------------------------

def test_modes_convert_deterministically() -> None:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    l_img = Image.fromarray(grey, "L")
    np.testing.assert_array_equal(np.asarray(to_rgb(l_img))[..., 1], grey)

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: colour underneath kept
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    la = Image.new("LA", (4, 4), (77, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [77, 77, 77]

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 1
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [200, 100, 50]

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]

    i16 = Image.fromarray(np.full((4, 4), 0xABCD, dtype=np.uint16))
    assert i16.mode.startswith("I;16")
    assert np.asarray(to_rgb(i16))[0, 0].tolist() == [0xAB] * 3

    one = Image.new("1", (4, 4), 1)
    assert np.asarray(to_rgb(one))[0, 0].tolist() == [255] * 3


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "1"])
def test_encoded_modes_round_trip_through_png(mode: str) -> None:
    rng = np.random.default_rng(4)
    base = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16))
    elif mode == "P":
        img = base.convert("P")
        img.info["transparency"] = 0
    else:
        img = base.convert(mode)
    out = load_image(_encode(img, "PNG"))
    assert out.mode == "RGB" and out.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(load_image(_encode(img, "PNG"))))


def test_cmyk_jpeg_decodes() -> None:
    img = Image.new("CMYK", (32, 32), (0, 0, 255, 0))
    out = load_image(_encode(img, "JPEG"))
    r, g, b = np.asarray(out)[16, 16].tolist()
    assert r > 200 and g > 200 and b < 60  # yellow


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(load_image(buf.getvalue()))
    assert out[0, 0].tolist() == [255, 0, 0]


def test_first_frame_never_counts_the_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a GIF's frames parses the whole file: a 23 MB GIF of a million 1x1 frames took
    1.8 s to decode instead of 0.05 s. Frame 0 is found without it, from a file or a PIL image."""
    from PIL import GifImagePlugin

    def counted(self: object) -> int:
        raise AssertionError("n_frames was computed")

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(counted))
    header = b"GIF89a" + bytes([1, 0, 1, 0, 0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x21\xf9\x04\x00\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    assert load_image(header + frame * 100_000 + b";").size == (1, 1)
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = Image.open(buf)
    gif.seek(1)  # a PIL image handed over at another frame still gives frame 0
    assert np.asarray(load_image(gif))[0, 0].tolist() == [255, 0, 0]


def test_multipage_tiff_uses_first_page() -> None:
    pages = [Image.new("RGB", (8, 8), c) for c in ((0, 255, 0), (255, 0, 255))]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    assert np.asarray(load_image(buf.getvalue()))[0, 0].tolist() == [0, 255, 0]


def test_numpy_inputs() -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(arr)), arr)
    np.testing.assert_array_equal(np.asarray(load_image(arr / 255.0)), arr)
    np.testing.assert_array_equal(np.asarray(load_image(arr.astype(np.uint16) << 8)), arr)
    assert load_image(arr[..., 0]).mode == "RGB"
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(ImageError, match="dtype"):
        load_image(np.zeros((4, 4, 3), np.complex64))


def test_allowed_formats_constant() -> None:
    assert ALLOWED_FORMATS == ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


def test_pipes_and_devices_are_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="regular file"):
        load_image(fifo)  # opening a FIFO for reading would block forever
    with pytest.raises(ImageError, match="regular file"):
        load_image("/dev/zero")


def test_symlink_to_an_image_is_followed(tmp_path: Path, rgb: Image.Image) -> None:
    target = tmp_path / "real.png"
    target.write_bytes(_encode(rgb, "PNG"))
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert load_image(link).size == (96, 64)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageError):
        load_image(loop)
