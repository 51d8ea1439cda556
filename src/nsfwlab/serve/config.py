"""Configuration of the HTTP service: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..bank import DEFAULT_MAX_DISTANCE
from ..config import DecodeLimits
from ..errors import ConfigError
from ..frames import VIDEO_CONTAINERS, FrameOptions
from ..imageio import ALLOWED_FORMATS
from .origin import normalize_host, normalize_origin
from .ratelimit import RateLimit
from .sentinel import SentinelConfig

__all__ = ["SERVE_FORMATS", "VIDEO_FORMATS", "AnswerMode", "AttackPolicy", "ServeConfig"]

#: The longest added delay per request of a flagged caller under ``AttackPolicy.SLOW``: a longer
#: one would hold a request slot (``max_concurrent_requests``) for a time a client cannot tell from a hang.
MAX_ATTACK_DELAY_S = 30.0


class AttackPolicy(StrEnum):
    """What the server does with a caller flagged as running a query attack (it is always counted,
    logged and, with review, queued): ``log`` nothing more; ``slow`` delays each of its scoring
    requests by ``attack_delay_s``; ``block`` refuses them with 403 ``query_attack``."""

    LOG = "log"
    SLOW = "slow"
    BLOCK = "block"


class AnswerMode(StrEnum):
    """What a scoring answer reveals: ``score`` (the score, raw score and frame scores) or ``label``
    (the label and bank match only: an attacker then learns one bit per query)."""

    SCORE = "score"
    LABEL = "label"

#: Video containers (by content) a server may accept beside the core's image formats.
VIDEO_FORMATS: tuple[str, ...] = tuple(VIDEO_CONTAINERS)
#: Every format a server may accept: the core's images, then the video containers.
SERVE_FORMATS: tuple[str, ...] = ALLOWED_FORMATS + VIDEO_FORMATS


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``create_app`` needs besides the detector.

    Limits (each answered with its own status, the server staying up):

    - ``max_body_bytes``: the whole request body, counted as it streams in (also for chunked
      uploads without ``Content-Length``); over it: 413.
    - ``max_files``: image parts in one multipart request; over it: 413.
    - ``limits``: the core's per-image caps (encoded bytes, and pixels read from the header, so a
      decompression bomb is refused without being decoded): 413.
    - ``formats``: allowed formats, checked by magic bytes: a subset of the core's images and of
      the video containers ``MP4`` (MP4/MOV) and ``MATROSKA`` (MKV/WebM): 415.
    - ``max_concurrent_requests``: scoring requests being handled at once; over it: 429 at once.
    - ``queue_size``: images waiting for the model; a request that would overflow it: 429 at once.
    - ``body_timeout_s``: seconds a request may take to send its whole body; over it: 408 (a slow
      or stalled upload would otherwise hold a request slot forever).

    Micro-batching: images from concurrent requests are gathered into one model call of at most
    ``max_batch`` images, waiting at most ``max_wait_ms`` for the batch to fill.
    ``batching=False`` runs one model call per image (the naive baseline of the benchmark).
    Batches of 16 with a 5 ms wait served 1.17-1.19x the images per second of the naive server on
    the 2-core CPU at concurrency 16, with a lower median latency (BENCHMARKS.md); on a GPU, where
    a call costs about the same for 1 or 16 images, batching matters more.

    Review: with a ``data_dir``, images whose score falls in the detector's review band are kept
    (content-addressed) for the ``/review`` page; ``audit_rate`` is the share of confident
    decisions (safe or nsfw) that are queued too, drawn with ``audit_seed``.

    Videos and animations cost far more than a still (every frame decoded): they are decoded and
    scored by their own ``media_workers`` threads, apart from the ``decode_workers`` that serve
    still images, so stills are never queued behind them; at most ``max_concurrent_media`` of
    them are handled or waiting at once, beyond which a request carrying one is answered 429 at
    once. Their decoding work is capped before decoding by ``limits.max_animation_pixels``.

    Videos and animations (animated GIF, WebP, PNG) are scored frame by frame through
    ``Detector.score_frames`` with ``frames`` (:class:`~nsfwlab.frames.FrameOptions`: sampling,
    aggregation, the caps on duration and decoded frames, 413 ``too_long``) in the decode pool;
    their per-frame pixel cap is the detector's ``limits`` (the CLI gives both the same).

    ``bank``: a hash bank file (:class:`~nsfwlab.bank.Bank`); still images whose PDQ hash is within
    ``match_distance`` bits of a banked one take its human decision as their label, and reviewers'
    safe/nsfw decisions are banked. ``None``: no bank.

    ``api_keys``: when non-empty, ``/v1/*`` requests must carry one of them in ``X-API-Key`` or
    ``Authorization: Bearer``; otherwise 401.

    ``allow_origins``: web origins (``https://host[:port]``) besides the server's own whose pages
    may send state-changing requests (POST, PUT, PATCH, DELETE); a request from any other
    ``Origin`` is refused with 403 (:mod:`~nsfwlab.serve.origin`). Requests without ``Origin``
    (not from a browser page) pass. No CORS headers are ever sent.

    ``allowed_hosts``: when non-empty, the host names (without port) a request's ``Host`` header
    may carry; any other is refused with 403 on every route. A server on a loopback address
    should allow only its loopback names: a web page whose own host name resolves to 127.0.0.1
    (DNS rebinding) is otherwise same-origin to it. Empty: any host.

    ``max_json_bytes``: the cap on a JSON request body (the review label), checked on
    ``Content-Length`` and while the body streams in: 413 at once. JSON routes accept only
    ``Content-Type: application/json`` (415), so a cross-site HTML form cannot post to them.

    ``rate_limit``: requests per API key (per client address when there are no keys) to
    ``/v1/*``, as a :class:`~nsfwlab.serve.ratelimit.RateLimit` or its text (``"5/s"``,
    ``"300/min"``); over it: 429 ``rate_limited`` with ``Retry-After``. ``None``: no limit.

    ``detect_attacks``: the rule (:class:`~nsfwlab.serve.sentinel.SentinelConfig`; its boundaries
    are replaced by the detector's thresholds) by which a caller (API key, else client address)
    whose still uploads are many near-duplicates of one image with scores crowding or climbing
    toward a band boundary is flagged as running a query attack; ``None``: no detection. A flag is
    counted, logged on ``nsfwlab.serve.audit``, queued for review (with a ``data_dir``) and handled
    by ``on_attack`` (:class:`AttackPolicy`), ``slow`` adding ``attack_delay_s`` (at most 30 s).

    ``answer``: :class:`AnswerMode`; ``label`` leaves every score out of scoring answers.
    """

    data_dir: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_files: int = 16
    limits: DecodeLimits = field(default_factory=DecodeLimits.from_env)
    formats: tuple[str, ...] = SERVE_FORMATS
    max_concurrent_requests: int = 64
    queue_size: int = 128
    body_timeout_s: float = 60.0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    batching: bool = True
    decode_workers: int = 2
    media_workers: int = 1
    max_concurrent_media: int = 4
    api_keys: tuple[str, ...] = ()
    audit_rate: float = 0.0
    audit_seed: int | None = None
    rate_limit: RateLimit | str | None = None
    frames: FrameOptions = field(default_factory=FrameOptions)
    bank: Path | None = None
    match_distance: int = DEFAULT_MAX_DISTANCE
    allow_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_json_bytes: int = 64 * 1024
    detect_attacks: SentinelConfig | None = None
    on_attack: AttackPolicy = AttackPolicy.LOG
    attack_delay_s: float = 2.0
    answer: AnswerMode = AnswerMode.SCORE

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_files", "max_concurrent_requests", "queue_size",
                     "max_batch", "decode_workers", "max_json_bytes", "media_workers", "max_concurrent_media"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.body_timeout_s > 0:
            raise ConfigError(f"body_timeout_s must be positive, got {self.body_timeout_s}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ConfigError(f"audit_rate must lie in [0, 1], got {self.audit_rate}")
        unknown = [f for f in self.formats if f not in SERVE_FORMATS]
        if unknown or not self.formats:
            raise ConfigError(
                f"formats must be a non-empty subset of {', '.join(SERVE_FORMATS)}; got {list(self.formats)}"
            )
        if not isinstance(self.match_distance, int) or not 0 <= self.match_distance <= 256:
            raise ConfigError(f"match_distance must be an integer from 0 to 256, got {self.match_distance!r}")
        if isinstance(self.api_keys, str) or any(not isinstance(k, str) or not k or k != k.strip()
                                                 for k in self.api_keys):
            # An empty key never means "no auth": only an empty tuple does.
            raise ConfigError("api_keys must be a tuple of non-empty keys without surrounding whitespace",
                              param="api_keys")
        if isinstance(self.allow_origins, str):
            raise ConfigError("allow_origins must be a tuple of origins, not one string", param="allow_origins")
        object.__setattr__(self, "allow_origins", tuple(normalize_origin(o) for o in self.allow_origins))
        if isinstance(self.allowed_hosts, str):
            raise ConfigError("allowed_hosts must be a tuple of host names, not one string", param="allowed_hosts")
        object.__setattr__(self, "allowed_hosts", tuple(normalize_host(h) for h in self.allowed_hosts))
        if not 0.0 <= self.attack_delay_s <= MAX_ATTACK_DELAY_S:
            raise ConfigError(f"attack_delay_s must lie in [0, {MAX_ATTACK_DELAY_S:g}] seconds, got "
                              f"{self.attack_delay_s}", param="attack_delay_s")
        for name, enum in (("on_attack", AttackPolicy), ("answer", AnswerMode)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise ConfigError(f"{name} must be one of {', '.join(e.value for e in enum)}, got "
                                  f"{getattr(self, name)!r}", param=name) from None
        if isinstance(self.rate_limit, str):
            object.__setattr__(self, "rate_limit", RateLimit.parse(self.rate_limit))
        for name in ("data_dir", "bank"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def model_batch(self) -> int:
        """Images per model call: ``max_batch``, or 1 without batching."""
        return self.max_batch if self.batching else 1

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0 if self.batching else 0.0
