"""Safe image decoding.

Inputs may be hostile. The rules, in order:

1. Bytes are read with a cap (``DecodeLimits.max_bytes``); an empty input is refused.
2. The format is decided by the leading bytes, never by the file name, and must be one of
   JPEG, PNG, GIF, WebP, BMP or TIFF. Pillow is then told to try only that format's plugin, so
   EPS/PDF/PSD and anything that would run Ghostscript are never reached.
3. Width x height is read from the header and checked against ``DecodeLimits.max_pixels`` before
   any pixel is decoded (decompression bombs are refused in microseconds).
4. Decoding errors become :class:`~nsfwlab.errors.TruncatedImageError` or
   :class:`~nsfwlab.errors.CorruptImageError`; nothing else escapes.
5. Animated and multi-page files contribute their first frame.
6. Every pixel mode becomes RGB deterministically (see :func:`to_rgb`).

8-bit non-palette PNGs are decoded by libspng (``pyspng``), whose pixels equal Pillow's and come
1.6x faster (:func:`_library_decode`); Pillow decodes everything else, and any PNG libspng refuses
(so a broken file fails with Pillow's diagnosis). The tests hold the pixels equal to Pillow's.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DecodeLimits
from .errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from .filetree import EntryKind, PathFilter, TreeEntry, walk_tree

__all__ = [
    "ALLOWED_FORMATS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DecodedImage",
    "EntryKind",
    "ImageInput",
    "TreeEntry",
    "describe_source",
    "iter_image_files",
    "load_image",
    "looks_like_image",
    "open_image",
    "read_bytes",
    "sniff_format",
    "to_rgb",
    "walk_tree",
]

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]

#: Allowed formats, as Pillow names them.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Signatures of formats we recognise only to refuse them by name.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"II\x2b\x00", "BigTIFF"),
    (b"MM\x00\x2b", "BigTIFF"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x7fELF", "ELF executable"),
)


def sniff_format(head: bytes) -> str | None:
    """Return the Pillow format name of an allowed format from the first bytes, else ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 18:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _describe_refused(head: bytes) -> str:
    for sig, name in _REFUSED_SIGNATURES:
        if head.startswith(sig):
            return name
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith((b"<svg", b"<?xml")):
        return "SVG/XML"
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    try:
        head[:64].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown binary data"


def describe_source(source: object) -> str:
    """A short human name for an input, used in messages and reports."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height} {source.mode}>"
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(source).__name__}>"


def read_bytes(source: str | os.PathLike | bytes | bytearray | memoryview | IO[bytes],
               limits: DecodeLimits) -> bytes:
    """Read an encoded input into memory without ever reading more than ``max_bytes + 1``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            st = path.stat()
            if stat.S_ISDIR(st.st_mode):
                raise ImageError("is a directory, not an image file")
            if not stat.S_ISREG(st.st_mode):
                # FIFOs, sockets and devices could block forever or never end.
                raise ImageError("not a regular file (a pipe, socket or device); pass its bytes instead")
            size = st.st_size
            if size > limits.max_bytes:
                raise ImageTooLargeError(
                    f"file is {size} bytes, over the cap of {limits.max_bytes} bytes "
                    "(raise DecodeLimits.max_bytes / --max-bytes to allow it)"
                )
            with path.open("rb") as fh:
                # Sized by the file, not the cap: read(n) allocates n bytes up front. A file that
                # grew since stat is read on, up to the cap + 1 (the cap is checked below).
                data = fh.read(min(size, limits.max_bytes) + 1)
                if len(data) > size:
                    data += fh.read(limits.max_bytes + 1 - len(data))
        except FileNotFoundError:
            raise ImageError("no such file") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        except IsADirectoryError:
            raise ImageError("is a directory, not an image file") from None
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"cannot read stream: {exc}") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError("file object must be opened in binary mode ('rb')")
        data = bytes(data)
    else:
        raise ImageError(
            f"unsupported input type {type(source).__name__}: pass a path, bytes, a binary file "
            "object, a PIL image or a numpy array"
        )
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"input is over the cap of {limits.max_bytes} bytes "
            "(raise DecodeLimits.max_bytes / --max-bytes to allow it)"
        )
    if not data:
        raise EmptyImageError("empty input (0 bytes)")
    return data


def _check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"invalid dimensions {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels is over the cap of {limits.max_pixels} "
            "(possible decompression bomb; raise DecodeLimits.max_pixels / --max-pixels to allow it)"
        )


@dataclass(frozen=True)
class DecodedImage:
    """An opened, header-checked image whose pixels are not yet decoded."""

    image: Image.Image
    format: str
    nbytes: int


def open_image(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """Identify and header-check encoded bytes; pixels are decoded later by :func:`to_rgb`."""
    if not data:
        raise EmptyImageError("empty input (0 bytes)")
    fmt = sniff_format(data[:32])
    if fmt is None:
        kind = _describe_refused(data[:64])
        raise UnsupportedFormatError(
            f"not an allowed image format (looks like {kind}); allowed: "
            + ", ".join(ALLOWED_FORMATS)
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hostile files warn; we raise instead
            img = _open_plugin(data, fmt)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb refused: {exc}") from None
    except Exception as exc:
        raise _decode_error(fmt, exc) from None
    _check_pixels(img.width, img.height, limits)
    return DecodedImage(img, fmt, len(data))


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _open_plugin(data: bytes, fmt: str) -> Image.Image:
    """``Image.open(..., formats=[fmt])`` without Pillow's process-wide pixel limit.

    ``Image.open`` refuses anything over ``2 * Image.MAX_IMAGE_PIXELS`` (178,956,970 by default)
    with its own message, so a ``max_pixels`` raised above that could never be honoured and a
    bomb was reported against Pillow's limit instead of ours. The plugin only parses the header
    here; :func:`_check_pixels` applies ``DecodeLimits.max_pixels`` right after, before any pixel
    is decoded. A header the plugin rejects fails as in ``Image.open`` ("cannot identify").
    """
    if fmt not in Image.OPEN:
        Image.init()
    factory, _accept = Image.OPEN[fmt]
    try:
        return factory(io.BytesIO(data), "")
    except (SyntaxError, IndexError, TypeError, struct.error):
        raise UnidentifiedImageError("cannot identify image file") from None


def _decode_error(fmt: str, exc: BaseException) -> ImageError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Pillow names its in-memory buffer ("cannot identify image file <_io.BytesIO object at
    # 0x7f...>"): noise for the user, and it makes the message differ from run to run.
    text = _OBJECT_REPR.sub("", text) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return ImageTooLargeError(f"{fmt} image needs more memory than available to decode")
    lowered = text.lower()
    if isinstance(exc, EOFError) or "truncated" in lowered or "premature end" in lowered \
            or "unexpected end" in lowered or "buffer is not large enough" in lowered:
        return TruncatedImageError(f"truncated {fmt} file: {text}")
    return CorruptImageError(f"corrupt {fmt} data: {text}")


def _first_frame(img: Image.Image) -> Image.Image:
    """Frame 0 of an animated or multi-page image. Asks ``tell()``, never ``n_frames``: counting
    a GIF's frames parses the whole file, seconds for one with millions of tiny frames."""
    if img.tell() != 0:
        img.seek(0)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, deterministically.

    - RGB: unchanged. L, P, CMYK, YCbCr, LAB, HSV, 1: Pillow's ``convert("RGB")``, as the original
      open_nsfw pipeline did.
    - RGBA, LA, PA, P with transparency, RGBa, La: the alpha channel is dropped (the colour under a
      transparent pixel is kept), exactly like the original pipeline's ``convert("RGB")``, so
      scores stay comparable with published open_nsfw scores.
    - I;16 / I;16B / I;16L / I / I;32: high-bit-depth grey is scaled to 8 bits by ``value >> 8``
      after clipping to [0, 65535] (Pillow's ``convert`` would clip everything above 255 to white).
    - F: clipped to [0, 255] and rounded.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "I;32", "I;32B", "I;32L"):
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("P", "PA") and "transparency" in img.info:
        # Pillow warns that such images "should be converted to RGBA"; we drop alpha on purpose.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray, limits: DecodeLimits) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(
            f"array of shape {arr.shape} is not an image: expected HxW, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    _check_pixels(arr.shape[1], arr.shape[0], limits)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError("float arrays must hold finite values in [0, 1]")
        arr = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {arr.dtype}: use uint8, uint16 or float in [0, 1]")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else arr.shape[2]]
    return Image.fromarray(np.ascontiguousarray(arr), mode=mode)


def load_image(source: ImageInput, limits: DecodeLimits | None = None, *,
               draft_size: int | None = None) -> Image.Image:
    """Decode any supported input into an RGB PIL image under ``limits``.

    Accepts a path, bytes, a binary file object, a PIL image or a numpy array (RGB order,
    uint8/uint16, or float in [0, 1]). ``draft_size`` lets libjpeg decode JPEGs at a reduced DCT
    scale no smaller than that size (a faster, non-exact path). Raises an
    :class:`~nsfwlab.errors.ImageError` subclass naming the problem.
    """
    limits = limits or DecodeLimits()
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, limits)
        return to_rgb(_first_frame(source))
    if isinstance(source, np.ndarray):
        return to_rgb(_array_to_image(source, limits))
    data = read_bytes(source, limits)
    opened = open_image(data, limits)
    fast = _library_decode(data, opened)
    if fast is not None:
        return fast
    img = opened.image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hostile files warn; we raise instead
            if draft_size is not None and opened.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img = _first_frame(img)
            img.load()
            rgb = to_rgb(img)
            rgb.load()
    except ImageError:
        raise
    except Exception as exc:
        raise _decode_error(opened.format, exc) from None
    return rgb


#: PNG colour types whose 8-bit samples libspng turns into Pillow's RGB: grey, RGB, grey+alpha, RGBA
#: (alpha dropped, never composited). Palette images and 16-bit samples stay with Pillow.
_SPNG_COLOUR_TYPES = frozenset({0, 2, 4, 6})


def _library_decode(data: bytes, opened: DecodedImage) -> Image.Image | None:
    """Decode a header-checked 8-bit grey/RGB/grey+alpha/RGBA PNG with libspng, whose pixels are
    Pillow's ``convert("RGB")`` exactly (alpha dropped) at 1.6x the speed on photos
    (BENCHMARKS.md, "Scan"). ``None`` for every other file, and when libspng refuses one: Pillow
    then decodes it, or names what is wrong with it.

    JPEGs stay with Pillow: libjpeg-turbo's own TurboJPEG API (simplejpeg) decodes the same pixels,
    but turning its array into a Pillow image for the resize costs what it saves (measured).
    """
    if not (opened.format == "PNG" and len(data) > 33 and data[12:16] == b"IHDR" and data[24] == 8
            and data[25] in _SPNG_COLOUR_TYPES):
        return None
    try:
        import pyspng

        arr = pyspng.load(data, "RGB")
    except Exception:  # a refusal: Pillow decodes the file or diagnoses it
        return None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        return None
    return Image.fromarray(arr)


#: Names that claim to be images: such files are taken from a directory (and their errors
#: reported) even when their content is not an allowed format.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".jxl",
})
#: Names that claim to be videos (MP4/QuickTime and Matroska/WebM; scored frame by frame by
#: :mod:`nsfwlab.frames`), taken from a directory like image names.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv"})


def looks_like_image(path: str | os.PathLike, *, sniff: Callable[[bytes], str | None] = sniff_format,
                     suffixes: Collection[str] = IMAGE_SUFFIXES) -> bool:
    """Whether a regular file found in a directory is taken as an image: an allowed format by its
    first bytes (``sniff``), or an image name (``suffixes``; so a broken ``.jpg`` is still
    reported). Unreadable files count, so that their error is reported rather than hidden. Pass
    ``sniff`` and ``suffixes`` that also know videos to take those too."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return True
    if sniff(head) is not None:
        return True
    return os.path.splitext(os.fspath(path))[1].lower() in suffixes


def iter_image_files(directory: str | os.PathLike, *, sniff: Callable[[bytes], str | None] = sniff_format,
                     suffixes: Collection[str] = IMAGE_SUFFIXES,
                     path_filter: PathFilter | None = None) -> Iterator[Path | ImageError]:
    """The image files under ``directory`` (recursive, sorted, selected by ``path_filter``; see
    :func:`nsfwlab.filetree.walk_tree` and :func:`looks_like_image`), and, in their place, an
    :class:`ImageError` (its ``source`` the path) for each directory that cannot be listed. Regular
    files are sniffed; pipes, devices and broken links are never opened here: they are yielded
    whatever their name, so that reading them reports what they are (nothing is skipped silently)."""
    for entry in walk_tree(directory, path_filter):
        if entry.kind is EntryKind.UNREADABLE:
            yield ImageError(entry.error or "cannot list directory", source=str(entry.path))
        elif entry.kind is EntryKind.FILE:
            if looks_like_image(entry.path, sniff=sniff, suffixes=suffixes):
                yield entry.path
        else:
            yield entry.path
