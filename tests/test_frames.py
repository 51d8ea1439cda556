"""Frames of videos and animations: decoding safely, sampling, aggregation and segments.

Clips are generated at test time with PyAV from flat colours; a fake backend (tests/synthetic.py's
RedFraction) scores a frame by its share of red pixels, so the "explicit" stand-in is a red frame."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest

from nsfwlab import Detector
from nsfwlab.config import DecodeLimits
from nsfwlab.errors import (
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    MediaTooLongError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from nsfwlab.frames import (
    FrameOptions,
    aggregate_scores,
    iter_frames,
    media_kind,
    open_scores,
    segments,
    sniff_video,
)
from synthetic import GREY, RED, RedFraction, animation, clip

av = pytest.importorskip("av")

@pytest.fixture(scope="module")
def fake() -> Detector:
    return Detector(RedFraction())


@pytest.mark.parametrize(("codec", "fmt"), [("libx264", "mp4"), ("libvpx-vp9", "webm")])
def test_a_clip_with_a_red_middle_is_flagged_with_its_segment(fake: Detector, codec: str, fmt: str) -> None:
    res = fake.score_frames(clip(codec, fmt))
    assert res.ok, res.error
    assert res.kind == "video" and res.score is not None and res.score >= 0.8
    assert res.label is not None and res.label.value == "nsfw"
    assert res.frames == 12  # 6 s at 2 fps
    assert [t for t, _ in res.frame_scores] == pytest.approx([0.5 * i for i in range(12)])
    (start, end, peak), = res.segments
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5 and peak >= 0.8


def test_sampling_spreads_over_long_videos_and_keyframes_mode(fake: Detector) -> None:
    data = clip(seconds=6.0, fps=10)
    spread = fake.score_frames(data, FrameOptions(max_frames=4))
    assert spread.frames == 4
    assert [t for t, _ in spread.frame_scores] == pytest.approx([0.0, 1.5, 3.0, 4.5])
    every = fake.score_frames(data, FrameOptions(fps=1000))
    assert every.frames == 60
    keys = fake.score_frames(data, FrameOptions(keyframes_only=True, fps=1000))
    assert 1 <= keys.frames < 60


def test_first_frame_mode_is_the_original_pipeline(fake: Detector, detector: Detector) -> None:
    gif = animation([GREY, GREY, RED, GREY, GREY])
    first = fake.score_frames(gif, FrameOptions(mode="first"))
    assert first.frames == 1 and first.score == pytest.approx(fake.nsfw_score(gif))
    real = detector.score_frames(gif, FrameOptions(mode="first"))
    assert real.score == pytest.approx(detector.nsfw_score(gif), abs=1e-6)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_whose_third_frame_is_red_is_flagged_there(fake: Detector, fmt: str) -> None:
    data = animation([GREY, (120, 120, 120), RED, (110, 110, 110), (100, 100, 100)], fmt=fmt)  # distinct:
    # Pillow merges identical consecutive frames
    res = fake.score_frames(data)
    assert res.ok, res.error
    assert res.kind == "animation" and res.frames == 5
    assert res.label is not None and res.label.value == "nsfw"
    (start, end, peak), = res.segments
    assert (start, end) == pytest.approx((0.4, 0.6)) and peak > 0.8
    assert fake.nsfw_score(data) < 0.2  # the first frame alone passes as safe: why this exists


def test_zero_duration_frames_are_timed_as_browsers_show_them(fake: Detector) -> None:
    data = animation([GREY, RED, (100, 100, 100)], duration=0)
    res = fake.score_frames(data)
    assert [t for t, _ in res.frame_scores] == pytest.approx([0.0, 0.1, 0.2])
    assert res.segments[0][:2] == pytest.approx((0.1, 0.2))


def _gif_of_frames(n: int) -> bytes:
    """A GIF of ``n`` 1x1 frames, written by hand (Pillow would merge identical frames)."""
    head = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"
    return head + frame * n + b"\x3b"


def test_a_gif_of_100000_frames_is_refused_by_its_frame_cap_quickly(fake: Detector) -> None:
    res = fake.score_frames(_gif_of_frames(100_000), FrameOptions(max_decoded_frames=20_000))
    assert isinstance(res.error, MediaTooLongError) and res.error.code == "too_long"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _apng_canvas(side: int, frames: int) -> bytes:
    """An APNG of ``frames`` frames on a ``side`` x ``side`` grey canvas, written by hand: the
    first frame fills the canvas (a run of zeros, compressed to little), the others are 1x1."""
    def fctl(seq: int, w: int, h: int) -> bytes:
        return _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))

    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)),
           _png_chunk(b"acTL", struct.pack(">II", frames, 0)), fctl(0, side, side),
           _png_chunk(b"IDAT", zlib.compress(bytes((side + 1) * side), 9))]
    seq = 1
    for _ in range(frames - 1):
        out += [fctl(seq, 1, 1), _png_chunk(b"fdAT", struct.pack(">I", seq + 1) + zlib.compress(b"\x00\x80"))]
        seq += 2
    return b"".join([*out, _png_chunk(b"IEND", b"")])


def _gif_canvas(side: int, frames: int) -> bytes:
    """A GIF of ``frames`` 1x1 frames on a ``side`` x ``side`` logical screen."""
    head = b"GIF89a" + struct.pack("<HH", side, side) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


@pytest.fixture(scope="module")
def costly_apng() -> bytes:
    return _apng_canvas(9000, 40)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_an_animation_too_costly_to_decode_is_refused_from_its_headers(costly_apng: bytes, fmt: str) -> None:
    """40 frames on a 9000x9000 canvas: small files, 3.2 billion pixels to decode (tens of seconds)."""
    data = costly_apng if fmt == "PNG" else _gif_canvas(9000, 40)
    assert len(data) < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"max_animation_pixels") as info:
        next(iter_frames(data, FrameOptions(), DecodeLimits()))
    assert time.perf_counter() - start < 3.0
    assert "40 frames of 9000x9000" in str(info.value) and "\n" not in str(info.value)
    assert info.value.code == "too_large"


def test_the_animation_cost_cap_counts_frames_times_canvas() -> None:
    data = _gif_canvas(200, 10)  # 10 x 40,000 pixels
    assert len(list(iter_frames(data, FrameOptions(), DecodeLimits(max_animation_pixels=400_000)))) == 10
    with pytest.raises(ImageTooLargeError, match="400,000 pixels, over the cap of 399,999"):
        list(iter_frames(data, FrameOptions(), DecodeLimits(max_animation_pixels=399_999)))
    tiny = _gif_of_frames(100)  # 1x1 frames still cost their per-frame floor
    with pytest.raises(ImageTooLargeError, match=r"1,638,400 pixels"):
        list(iter_frames(tiny, FrameOptions(), DecodeLimits(max_animation_pixels=1_000_000)))
    assert len(list(iter_frames(data, FrameOptions(mode="first"), DecodeLimits(max_animation_pixels=1)))) == 1


def test_the_animation_cost_cap_comes_from_the_environment() -> None:
    assert DecodeLimits().max_animation_pixels == 250_000_000
    env = {"NSFWLAB_MAX_ANIMATION_PIXELS": "1234"}
    assert DecodeLimits.from_env(env=env).max_animation_pixels == 1234
    assert DecodeLimits.from_env(max_animation_pixels=5, env=env).max_animation_pixels == 5
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="max_animation_pixels"):
            DecodeLimits(max_animation_pixels=bad)


def test_many_frames_are_sampled_evenly_up_to_the_cap(fake: Detector) -> None:
    res = fake.score_frames(_gif_of_frames(2_000), FrameOptions(max_frames=5))
    assert res.ok and res.frames == 5
    assert [t for t, _ in res.frame_scores] == pytest.approx([0.0, 50.0, 100.0, 149.9, 199.9], abs=0.11)


@pytest.mark.parametrize(("data", "error"), [
    (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nhttp://example.invalid/a.ts\n", UnsupportedFormatError),
    (b"ffconcat version 1.0\nfile '/etc/passwd'\n", UnsupportedFormatError),
    (b"just some text, not a video", UnsupportedFormatError),
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, CorruptImageError),
    (b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4, CorruptImageError),
])
def test_hostile_and_broken_inputs_are_typed_errors(fake: Detector, data: bytes, error: type) -> None:
    res = fake.score_frames(data)
    assert isinstance(res.error, error), res.error
    assert "\n" not in str(res.error)


def test_a_truncated_video_is_an_error_not_a_partial_score(fake: Detector) -> None:
    data = clip(seconds=2.0)
    for cut in (len(data) // 3, len(data) // 2, len(data) - 100):
        res = fake.score_frames(data[:cut])
        assert isinstance(res.error, TruncatedImageError), (cut, res)
    webm = clip("libvpx-vp9", "webm", seconds=2.0)
    for cut in (len(webm) // 2, len(webm) * 9 // 10, len(webm) - 1):
        res = fake.score_frames(webm[:cut])
        assert isinstance(res.error, TruncatedImageError), (cut, res)


@pytest.mark.parametrize("extra", [b"\n", b"appended text, not part of the video\n" * 3, bytes(range(256)) * 40,
                                   b"\x00\x00\x00\x00free"])
@pytest.mark.parametrize(("codec", "fmt"), [("libx264", "mp4"), ("libvpx-vp9", "webm")])
def test_a_complete_video_followed_by_other_bytes_is_trailing_data_not_truncated(fake: Detector, extra: bytes,
                                                                                codec: str, fmt: str) -> None:
    data = clip(codec, fmt, seconds=1.0)
    res = fake.score_frames(data + extra)
    assert isinstance(res.error, CorruptImageError) and not isinstance(res.error, TruncatedImageError), res.error
    assert res.error.code == "corrupt"
    assert f"{len(extra):,} bytes of trailing data after a complete file" in str(res.error)
    assert f"ends at byte {len(data):,}" in str(res.error)
    assert fake.score_frames(data).ok


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_a_truncated_animation_is_an_error(fake: Detector, fmt: str) -> None:
    data = animation([(i * 40, 0, 0) for i in range(5)], fmt=fmt)
    for cut in (len(data) // 2, len(data) * 3 // 4):
        res = fake.score_frames(data[:cut])
        assert isinstance(res.error, CorruptImageError), (fmt, cut, res)


def test_caps_checked_from_the_container_before_decoding(fake: Detector) -> None:
    data = clip(seconds=3.0)
    small = Detector(RedFraction(), limits=DecodeLimits(max_pixels=1000))
    assert isinstance(small.score_frames(data).error, ImageTooLargeError)
    too_long = fake.score_frames(data, FrameOptions(max_duration_s=2.0))
    assert isinstance(too_long.error, MediaTooLongError)
    few = fake.score_frames(data, FrameOptions(max_total_pixels=64 * 48 * 5))
    assert isinstance(few.error, ImageTooLargeError)


def test_a_disallowed_codec_is_refused(fake: Detector) -> None:
    res = fake.score_frames(clip("mpeg4", "mp4", seconds=1.0))
    assert isinstance(res.error, UnsupportedFormatError) and "mpeg4" in str(res.error)


def test_early_stop_ends_at_the_first_confident_batch() -> None:
    det = Detector(RedFraction(), batch_size=2)
    res = det.score_frames(clip(seconds=6.0, red=(0.0, 6.0)), FrameOptions(early_stop=True))
    assert res.stopped_early and res.frames == 2 and res.label is not None and res.label.value == "nsfw"


def test_still_images_are_one_frame(fake: Detector, photo_paths) -> None:
    res = fake.score_frames(photo_paths[0])
    assert res.ok and res.kind == "image" and res.frames == 1
    assert res.to_dict()["frames"] == 1 and "frame_scores" in res.to_dict(per_frame=True)


def test_sniffing_by_content() -> None:
    assert sniff_video(clip(seconds=0.5)[:16]) == "MP4"
    assert sniff_video(clip("libvpx-vp9", "webm", seconds=0.5)[:16]) == "MATROSKA"
    assert sniff_video(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 8) is None  # a HEIF still image
    assert media_kind(animation([GREY, RED])) == "animation"
    assert media_kind(animation([GREY])) == "image"
    frames = list(iter_frames(animation([GREY, RED, GREY]), FrameOptions(), DecodeLimits()))
    assert [f.index for f in frames] == [0, 1, 2]
    assert np.asarray(frames[-1].image())[0, 0].tolist() == list(GREY)


def test_opening_removes_short_spikes_and_keeps_long_runs() -> None:
    s = [0.1, 0.9, 0.1, 0.9, 0.95, 0.9, 0.1]
    assert open_scores(s, 1).tolist() == s
    assert open_scores(s, 2).tolist() == pytest.approx([0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1])
    assert open_scores(s, 3).tolist() == pytest.approx([0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1])
    assert open_scores(s, 4).tolist() == pytest.approx([0.1] * 7)
    assert open_scores([0.9, 0.8], 3).tolist() == [0.8, 0.8]


def test_aggregates_and_segments_by_hand() -> None:
    s = [0.1, 0.2, 0.9, 0.3]
    assert aggregate_scores(s, FrameOptions()) == 0.9
    assert aggregate_scores(s, FrameOptions(aggregate="mean")) == pytest.approx(0.375)
    assert aggregate_scores(s, FrameOptions(aggregate="topk-mean", topk=2)) == pytest.approx(0.6)
    assert aggregate_scores(s, FrameOptions(aggregate="p50")) == pytest.approx(0.25)
    assert aggregate_scores(s, FrameOptions(min_consecutive=2)) == pytest.approx(0.3)
    times, durs = [0.0, 0.5, 1.0, 1.5, 2.0], [0.5] * 5
    assert segments(times, durs, [0.9, 0.1, 0.85, 0.95, 0.1], 0.8) == [(0.0, 0.5, 0.9), (1.0, 2.0, 0.95)]
    assert segments(times, durs, [0.9, 0.1, 0.85, 0.95, 0.1], 0.8, min_consecutive=2) == [(1.0, 2.0, 0.95)]
    assert segments(times, durs, [0.1, 0.1, 0.1, 0.9, 0.9], 0.8) == [(1.5, 2.5, 0.9)]
    with pytest.raises(ConfigError):
        FrameOptions(aggregate="median")
    with pytest.raises(ConfigError):
        FrameOptions(fps=0)
    with pytest.raises(ConfigError):
        FrameOptions(mode="all")
