"""Frames of animated images and videos, decoded safely; which frames to score; and how frame
scores become one score, a label and segments.

Inputs are recognised by content, never by name:

- animated GIF, WebP and APNG through Pillow (the same allowlisted plugins as :mod:`nsfwlab.imageio`);
- MP4/MOV (H.264, HEVC, AV1) and WebM/Matroska (VP8, VP9, AV1) through PyAV (the optional extra
  ``video``, imported only when a video is met). Only the ``mov`` and ``matroska`` demuxers are
  used, on the bytes already read under the byte cap (no file name, URL or protocol ever reaches
  FFmpeg, so playlists, ``concat``/``subfile`` tricks and external data references cannot open
  anything); only the decoders named in :data:`VIDEO_DECODERS` run.

Caps: the container's own duration, frame size and frame count are checked before any frame is
decoded (:class:`~nsfwlab.errors.MediaTooLongError`, :class:`~nsfwlab.errors.ImageTooLargeError`),
and decoding stops at :attr:`FrameOptions.max_decoded_frames`, :attr:`FrameOptions.max_total_pixels`
and :attr:`FrameOptions.max_seconds` of wall time.

Sampling (:class:`FrameOptions`): videos at ``fps`` frames per second of stream time (2 by
default), spread evenly over the whole video when that would exceed ``max_frames``; animations
frame by frame, timed by their frame durations (a duration of 10 ms or less counts as 100 ms, as
browsers show it), spread evenly over the animation beyond ``max_frames``. ``mode="first"`` keeps
the original pipeline's first-frame behaviour.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from PIL import Image

from .config import DecodeLimits
from .errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    MediaTooLongError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from .imageio import open_image, to_rgb

__all__ = [
    "VIDEO_CONTAINERS",
    "VIDEO_DECODERS",
    "Aggregate",
    "Frame",
    "FrameMode",
    "FrameOptions",
    "aggregate_scores",
    "iter_frames",
    "media_kind",
    "open_scores",
    "segments",
    "sniff_video",
]

#: Containers recognised by content -> the one PyAV demuxer allowed for each.
VIDEO_CONTAINERS: dict[str, str] = {"MP4": "mov", "MATROSKA": "matroska"}
#: FFmpeg decoders allowed to run (AV1 decodes through libdav1d or FFmpeg's native av1).
VIDEO_DECODERS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libvpx", "libvpx-vp9"})
#: ISO-BMFF brands that are still images, refused by imageio by name (HEIF/AVIF), not videos.
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"avif", b"msf1")
#: Browsers show a GIF/WebP frame of 10 ms or less for 100 ms; so do we, for timing.
_MIN_FRAME_S, _SHORT_FRAME_S = 0.010, 0.100


class FrameMode(StrEnum):
    SAMPLE = "sample"
    FIRST = "first"


class Aggregate(StrEnum):
    """How frame scores become the file's score. ``pNN`` (e.g. ``p90``) is also accepted."""

    MAX = "max"
    MEAN = "mean"
    TOPK_MEAN = "topk-mean"


@dataclass(frozen=True)
class FrameOptions:
    """Which frames are scored, how their scores combine, and the decoding caps."""

    mode: FrameMode | str = FrameMode.SAMPLE
    fps: float = 2.0
    max_frames: int = 300
    keyframes_only: bool = False
    aggregate: str = "max"
    topk: int = 3
    min_consecutive: int = 1
    early_stop: bool = False
    max_duration_s: float = 4 * 3600.0
    max_decoded_frames: int = 200_000
    max_total_pixels: int = 200_000_000_000
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", FrameMode(self.mode))
        except ValueError:
            raise ConfigError(f"frames mode must be 'sample' or 'first', got {self.mode!r}") from None
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ConfigError(f"fps must be a positive number, got {self.fps}")
        for name in ("max_frames", "topk", "min_consecutive", "max_decoded_frames", "max_total_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_duration_s", "max_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        _aggregator(self.aggregate, self.topk)  # validates the name


@dataclass
class Frame:
    """One decoded frame: its index in the stream, its time and display duration in seconds, and
    its RGB image (decoded lazily; valid until the next frame is read)."""

    index: int
    time: float
    duration: float
    _image: Callable[[], Image.Image] = field(repr=False)

    def image(self) -> Image.Image:
        return self._image()


def sniff_video(head: bytes) -> str | None:
    """``"MP4"`` (ISO-BMFF / QuickTime) or ``"MATROSKA"`` (also WebM) from the first bytes."""
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] not in _STILL_BRANDS:
        return "MP4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free") and head[:2] == b"\x00\x00":
        return "MP4"  # QuickTime files without an ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "MATROSKA"
    return None


def media_kind(data: bytes) -> str:
    """``"video"``, ``"animation"`` (an animated GIF, WebP or APNG) or ``"image"``, by content."""
    if sniff_video(data[:16]) is not None:
        return "video"
    try:
        img = Image.open(io.BytesIO(data), formats=["GIF", "WEBP", "PNG"])
    except Exception:
        return "image"
    with img:
        return "animation" if getattr(img, "is_animated", False) else "image"


def iter_frames(data: bytes, options: FrameOptions, limits: DecodeLimits) -> Iterator[Frame]:
    """The frames to score of an encoded image, animation or video, in order (see the module doc).
    Raises a typed :class:`~nsfwlab.errors.ImageError` for bad input or exceeded caps."""
    container = sniff_video(data[:16])
    if container is not None:
        return _video_frames(data, container, options, limits)
    return _image_frames(data, options, limits)


# -- animations -----------------------------------------------------------------------------
def _frame_seconds(img: Image.Image) -> float:
    ms = img.info.get("duration")
    seconds = float(ms) / 1000.0 if isinstance(ms, (int, float)) and ms > 0 else 0.0
    return _SHORT_FRAME_S if seconds <= _MIN_FRAME_S else seconds


def _evenly(count: int, keep: int) -> set[int]:
    if count <= keep:
        return set(range(count))
    return {int(i) for i in np.rint(np.linspace(0, count - 1, keep))}


def _image_frames(data: bytes, options: FrameOptions, limits: DecodeLimits) -> Iterator[Frame]:
    decoded = open_image(data, limits)
    img = decoded.image
    animated = bool(getattr(img, "is_animated", False)) and decoded.format in ("GIF", "WEBP", "PNG")
    if not animated or options.mode is FrameMode.FIRST:
        yield Frame(0, 0.0, _frame_seconds(img), lambda: _safe_rgb(img, decoded.format))
        return
    count = _count_frames(img, decoded.format)
    if count > options.max_decoded_frames:
        raise MediaTooLongError(f"{decoded.format} animation has {count} frames, over the cap of "
                                f"{options.max_decoded_frames} (FrameOptions.max_decoded_frames)")
    if count * img.width * img.height > options.max_total_pixels:
        raise ImageTooLargeError(f"{decoded.format} animation of {count} frames of {img.width}x{img.height} "
                                 f"is over the cap of {options.max_total_pixels} decoded pixels")
    chosen = _evenly(count, options.max_frames)
    deadline = time.monotonic() + options.max_seconds
    t = 0.0
    for index in range(count):
        try:
            img.seek(index)
            img.load()  # WebP reports a frame's duration only once it is decoded
        except Exception as exc:
            raise _pillow_error(decoded.format, exc) from None
        duration = _frame_seconds(img)
        if index in chosen:
            yield Frame(index, t, duration, lambda: _safe_rgb(img, decoded.format))
        t += duration
        if time.monotonic() > deadline:
            raise MediaTooLongError(f"decoding took over {options.max_seconds:g} s (FrameOptions.max_seconds)")


def _count_frames(img: Image.Image, fmt: str) -> int:
    try:
        return int(getattr(img, "n_frames", 1))
    except Exception as exc:
        raise _pillow_error(fmt, exc) from None
    finally:
        try:
            img.seek(0)
        except Exception:  # a broken later frame is reported when it is reached
            pass


def _safe_rgb(img: Image.Image, fmt: str) -> Image.Image:
    try:
        return to_rgb(img)
    except Exception as exc:
        raise _pillow_error(fmt, exc) from None


def _pillow_error(fmt: str, exc: BaseException) -> CorruptImageError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in text.lower():
        return TruncatedImageError(f"truncated {fmt} animation: {text}")
    return CorruptImageError(f"corrupt {fmt} animation: {text}")


# -- videos ---------------------------------------------------------------------------------
def _av() -> Any:
    try:
        import av
    except ImportError:
        raise BackendUnavailableError(
            "scoring videos needs PyAV: pip install 'nsfwlab[video]'") from None
    return av


def _boxes_overrun(data: bytes) -> bool:
    """Whether an ISO-BMFF file's top-level boxes claim more bytes than the file has: a file cut
    short (FFmpeg says only "invalid data" when ``moov`` is cut, and decodes the frames before
    the cut of a "fast start" file without complaint)."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        header = 8
        if size == 1 and offset + 16 <= len(data):
            size, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        if size == 0:
            return False  # the last box runs to the end of the file
        if size < header:
            return False  # not a box structure we can judge: corrupt, not cut
        offset += size
    return offset != len(data)  # past the end, or a box header cut off


def _ebml_vint(data: bytes, pos: int, marker: bool) -> tuple[int, int] | None:
    """An EBML variable-size integer at ``pos``: (value, length), the length marker kept for IDs."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big")
    return (value if marker else value & ((1 << (7 * length)) - 1)), length


def _ebml_overrun(data: bytes) -> bool:
    """Whether a Matroska/WebM file's top-level elements (the EBML header, the Segment) claim more
    bytes than the file has. A Segment of unknown size (live streams) cannot be judged."""
    offset = 0
    while offset < len(data):
        ident = _ebml_vint(data, offset, marker=True)
        size = _ebml_vint(data, offset + ident[1], marker=False) if ident else None
        if ident is None or size is None:
            return True  # the file ends inside an element header
        if size[0] == (1 << (7 * size[1])) - 1:
            return False  # unknown size: runs to the end of the file
        offset += ident[1] + size[1] + size[0]
    return offset > len(data)


def _cut_short(data: bytes, container: str) -> bool:
    return _boxes_overrun(data) if container == "MP4" else _ebml_overrun(data)


#: PyAV's decoration of FFmpeg's messages: "[Errno 1094995529] ...: '<none>'" (the buffer has no name).
_AV_NOISE = re.compile(r"^\[Errno -?\d+\]\s*|:\s*'<none>'$")


def _video_error(data: bytes, container: str, exc: BaseException) -> CorruptImageError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _AV_NOISE.sub("", text) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, EOFError) or "moov atom not found" in lowered or "end of file" in lowered \
            or "truncat" in lowered or _cut_short(data, container):
        return TruncatedImageError(f"truncated {container} video: {text}")
    return CorruptImageError(f"corrupt {container} video: {text}")


def _video_frames(data: bytes, container: str, options: FrameOptions, limits: DecodeLimits) -> Iterator[Frame]:
    if _cut_short(data, container):  # FFmpeg would decode the frames before the cut without a word
        raise TruncatedImageError(f"truncated {container} video: the file ends before its data does")
    av = _av()
    demuxer = VIDEO_CONTAINERS[container]
    # No file name, URL or protocol: FFmpeg reads these bytes through a Python buffer. The mov
    # demuxer's external data references stay off (their default, set explicitly).
    opts = {"enable_drefs": "0", "use_absolute_path": "0"} if demuxer == "mov" else {}
    try:
        handle = av.open(io.BytesIO(data), mode="r", format=demuxer, options=opts)
    except av.FFmpegError as exc:
        raise _video_error(data, container, exc) from None
    with handle:
        if not handle.streams.video:
            raise UnsupportedFormatError(f"{container} file has no video stream")
        stream = handle.streams.video[0]
        decoder = stream.codec_context.name
        if decoder not in VIDEO_DECODERS:
            raise UnsupportedFormatError(f"video codec {decoder!r} is not allowed; allowed: H.264, HEVC, "
                                         "VP8, VP9, AV1")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise CorruptImageError(f"{container} video declares invalid dimensions {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageTooLargeError(f"{width}x{height} video frames are over the cap of {limits.max_pixels} "
                                     "pixels (raise DecodeLimits.max_pixels / --max-pixels to allow it)")
        duration = _declared_duration(av, handle, stream)
        if duration is not None and duration > options.max_duration_s:
            raise MediaTooLongError(f"{container} video lasts {duration:.0f} s, over the cap of "
                                    f"{options.max_duration_s:g} s (FrameOptions.max_duration_s)")
        rate = float(stream.average_rate) if stream.average_rate else None
        if duration is not None and rate and duration * rate * width * height > options.max_total_pixels:
            raise ImageTooLargeError(f"{container} video of about {duration * rate:.0f} frames of {width}x{height} "
                                     f"is over the cap of {options.max_total_pixels} decoded pixels")
        if options.keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        stream.thread_type = "AUTO"
        yield from _sample_video(av, handle, stream, container, duration, options, data)


def _declared_duration(av: Any, handle: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if handle.duration is not None:
        return float(handle.duration) / av.time_base
    return None


def _sample_video(av: Any, handle: Any, stream: Any, container: str, duration: float | None,
                  options: FrameOptions, data: bytes) -> Iterator[Frame]:
    interval = 1.0 / options.fps
    if duration is not None and duration > 0 and options.mode is FrameMode.SAMPLE:
        interval = max(interval, duration / options.max_frames)
    next_t = -math.inf
    decoded = emitted = 0
    pixels = 0
    deadline = time.monotonic() + options.max_seconds
    try:
        for frame in handle.decode(stream):
            decoded += 1
            pixels += frame.width * frame.height
            if decoded > options.max_decoded_frames or pixels > options.max_total_pixels:
                raise MediaTooLongError(f"{container} video: over the cap of {options.max_decoded_frames} decoded "
                                        f"frames or {options.max_total_pixels} decoded pixels")
            if time.monotonic() > deadline:
                raise MediaTooLongError(f"decoding took over {options.max_seconds:g} s (FrameOptions.max_seconds)")
            t = float(frame.time) if frame.time is not None else (decoded - 1) * interval
            if t + 1e-9 < next_t:
                continue
            yield Frame(decoded - 1, t, interval, frame.to_image)
            emitted += 1
            if options.mode is FrameMode.FIRST or emitted >= options.max_frames:
                return
            # the sampling grid: the next sample is due one interval after this one's slot
            next_t = (math.floor(t / interval + 1e-9) + 1) * interval
    except av.FFmpegError as exc:  # damaged data, at the start or after good frames: the file is refused
        raise _video_error(data, container, exc) from None
    if emitted == 0:
        raise TruncatedImageError(f"{container} video holds no decodable frame") if decoded == 0 \
            else CorruptImageError(f"{container} video: no frame could be sampled")


# -- scores -> one score, segments ----------------------------------------------------------
def _aggregator(name: str, topk: int) -> Callable[[np.ndarray], float]:
    def percentile(q: float) -> Callable[[np.ndarray], float]:
        return lambda s: float(np.percentile(s, q))

    if name == Aggregate.MAX.value:
        return percentile(100.0)
    if name == Aggregate.MEAN.value:
        return lambda s: float(np.mean(s))
    if name == Aggregate.TOPK_MEAN.value:
        return lambda s: float(np.mean(np.sort(s)[-topk:]))
    if len(name) > 1 and name[0] == "p" and name[1:].replace(".", "", 1).isdigit() and 0 <= float(name[1:]) <= 100:
        return percentile(float(name[1:]))
    raise ConfigError(f"unknown aggregate {name!r}; use max, mean, topk-mean or pNN (e.g. p90)")


def open_scores(scores: Sequence[float], k: int) -> np.ndarray:
    """Morphological opening of the score sequence with a window of ``k`` frames: each frame keeps
    the best of the minima of the ``k``-frame windows that contain it, so a run of fewer than ``k``
    high frames (an isolated spike) falls to its neighbours' level while longer runs are kept."""
    s = np.asarray(scores, dtype=np.float64)
    if k <= 1 or s.size == 0:
        return s
    if s.size < k:
        return np.full_like(s, s.min())
    windows = np.lib.stride_tricks.sliding_window_view(s, k).min(axis=1)  # min of window starting at i
    out = np.empty_like(s)
    for i in range(s.size):
        lo, hi = max(0, i - k + 1), min(i, windows.size - 1)
        out[i] = windows[lo : hi + 1].max()
    return out


def aggregate_scores(scores: Sequence[float], options: FrameOptions) -> float:
    """The file's score from its frame scores (after :func:`open_scores` when ``min_consecutive`` > 1)."""
    if len(scores) == 0:
        raise ConfigError("no frame scores to aggregate")
    return _aggregator(options.aggregate, options.topk)(open_scores(scores, options.min_consecutive))


def segments(times: Sequence[float], durations: Sequence[float], scores: Sequence[float], above: float,
             min_consecutive: int = 1) -> list[tuple[float, float, float]]:
    """Runs of sampled frames scoring above ``above`` (after :func:`open_scores`), as
    ``(start_s, end_s, max_score)``: ``end_s`` is the last flagged sample's time plus its interval."""
    opened = open_scores(scores, min_consecutive)
    raw = np.asarray(scores, dtype=np.float64)
    out: list[tuple[float, float, float]] = []
    start = None
    for i, value in enumerate(opened):
        if value > above and start is None:
            start = i
        if start is not None and (value <= above or i == len(opened) - 1):
            end = i if value > above else i - 1
            out.append((float(times[start]), float(times[end] + durations[end]),
                        float(raw[start : end + 1].max())))
            start = None
    return out
