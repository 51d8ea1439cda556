"""``nsfwlab serve`` (the HTTP service) and ``nsfwlab review export`` (labelled images as folders)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..calibration import load_calibration
from ..config import BackendName, DecodeLimits, Device, Precision, Thresholds
from ..errors import ConfigError, NsfwlabError
from ..frames import FrameMode, FrameOptions
from ..modelsource import check_model_name
from ..outputs import atomic_output, csv_writer
from ..sidefiles import read_side_file, read_text_file
from ._common import (
    AGGREGATE_OPTION,
    FPS_OPTION,
    FRAMES_OPTION,
    MAX_FRAMES_OPTION,
    MIN_CONSECUTIVE_OPTION,
    ExitCode,
    fail,
    output_dir,
    progress_bar,
    stderr,
    tagged,
)

if TYPE_CHECKING:
    from ..serve.review import ReviewStore

__all__ = ["review_app", "serve_command"]


def _read_keys(api_key: list[str], api_key_file: Path | None) -> tuple[str, ...]:
    """The API keys of --api-key and --api-key-file. An empty or blank key is refused, never
    dropped: dropping it could leave no key at all, and no key means a server without auth."""
    if any(not k.strip() for k in api_key):
        raise ConfigError("an empty or blank --api-key would serve everyone without a key; give a real key "
                          "(or leave --api-key out for a server without keys)")
    keys = [k.strip() for k in api_key]
    if api_key_file is not None:
        text = read_text_file(api_key_file, "the API key file", " (one key per line)")
        from_file = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not from_file:
            # Starting anyway would serve everyone without a key: the opposite of what was asked.
            raise ConfigError(f"the API key file {api_key_file} holds no key (one key per line)")
        keys += from_file
    return tuple(keys)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all: put it behind TLS)."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Keep review-band images and labels here (enables /review)."),
    api_key: list[str] = typer.Option([], "--api-key", help="Require this key (repeatable). Prefer --api-key-file."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File with one API key per line."),
    allow_origin: list[str] = typer.Option([], "--allow-origin", help="A web origin (https://host[:port]) besides the server's own whose pages may send POSTs, e.g. a review front end (repeatable); others get 403."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="A host name the Host header may carry (repeatable); listening on a loopback address, only localhost, 127.0.0.1 and [::1] are allowed besides these (against DNS rebinding); elsewhere any, unless given."),
    safe_below: float | None = typer.Option(None, help="Scores below this are 'safe' (the default model's; default: its band, 0.2 for open_nsfw)."),
    nsfw_above: float | None = typer.Option(None, help="Scores above this are 'nsfw'; between is 'review', queued for humans (the default model's; default: its band, 0.8 for open_nsfw)."),
    audit_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of confident decisions also queued for review."),
    rate_limit: str | None = typer.Option(None, "--rate-limit", help="Scoring requests per API key (per client without keys): N/s, N/min or N/h; over it 429."),
    max_body_bytes: int = typer.Option(32 * 1024 * 1024, min=1, help="Cap on a request body (413), counted while streaming."),
    max_files: int = typer.Option(16, min=1, help="Most images in one request (413)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Cap on one encoded image (413) (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    max_pixels: int | None = typer.Option(None, min=1, help="Cap on width x height, read from the header (413) (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_animation_pixels: int | None = typer.Option(None, min=1, help="Cap on an animation's decoding work, frames x canvas pixels, read from its headers (413) (default: $NSFWLAB_MAX_ANIMATION_PIXELS, else 250000000)."),
    max_batch: int = typer.Option(16, min=1, help="Most images per model call (micro-batching of concurrent requests)."),
    max_wait_ms: float = typer.Option(5.0, min=0.0, help="Longest wait for a batch to fill."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Micro-batch concurrent requests."),
    queue_size: int = typer.Option(128, min=1, help="Images waiting for the model before 429."),
    max_concurrent: int = typer.Option(64, min=1, help="Scoring requests handled at once before 429."),
    body_timeout: float = typer.Option(60.0, min=0.001, help="Seconds a request may take to send its body before 408 (slow or stalled uploads)."),
    decode_workers: int = typer.Option(2, min=1, help="Threads decoding and preprocessing (and scoring videos)."),
    media_workers: int = typer.Option(1, min=1, help="Threads decoding and scoring animations and videos, apart from the still images' threads."),
    max_concurrent_media: int = typer.Option(4, min=1, help="Animations and videos handled or waiting at once before 429."),
    frames: FrameMode = FRAMES_OPTION,
    fps: float = FPS_OPTION,
    max_frames: int = MAX_FRAMES_OPTION,
    aggregate: str = AGGREGATE_OPTION,
    min_consecutive: int = MIN_CONSECUTIVE_OPTION,
    bank: Path | None = typer.Option(None, "--bank", help="Hash bank file (default: bank.sqlite3 in --data-dir when there is one): near-duplicates of banked images take the human decision; reviewers' decisions are banked."),
    no_bank: bool = typer.Option(False, "--no-bank", help="No hash bank, even with --data-dir."),
    match_distance: int = typer.Option(31, "--match-distance", min=0, max=256, help="Most differing PDQ bits (of 256) for a bank match."),
    detect_attacks: bool = typer.Option(False, "--detect-attacks", help="Flag API keys (clients without keys) whose uploads are many near-duplicates of one image with scores crowding or climbing toward a band boundary: a query attack (counted, logged, queued for review). Needs pdqhash."),
    on_attack: str = typer.Option("log", "--on-attack", help="What to do with a flagged caller's scoring requests: log (nothing more), slow (delay each by --attack-delay) or block (403 query_attack)."),
    attack_delay: float = typer.Option(2.0, "--attack-delay", min=0.0, max=30.0, help="Seconds added to each scoring request of a flagged caller with --on-attack slow."),
    answer: str = typer.Option("score", "--answer", help="What scoring answers reveal: score (scores and labels) or label (labels and bank matches only)."),
    calibration: Path | None = typer.Option(None, "--calibration", help="A calibration.json from `evaluate --calibrate` for the default model: its score becomes the calibrated probability (labels and the review band follow it); raw_score keeps the model's."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine."),
    precision: Precision = typer.Option(Precision.AUTO, help="torch backend precision."),
    model: list[str] = typer.Option([], "--model", help="A model id (`nsfwlab models`) or a fine-tuned checkpoint (.pt) or exported .onnx; repeat it to serve several (the first is the default, the others are picked with ?model=ID)."),
    graceful_timeout: int = typer.Option(30, min=0, help="On SIGTERM, seconds to let in-flight requests finish (0: no limit)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    ssl_certfile: Path | None = typer.Option(None, "--ssl-certfile", help="Serve HTTPS with this PEM certificate (chain)."),
    ssl_keyfile: Path | None = typer.Option(None, "--ssl-keyfile", help="The certificate's PEM private key (if not in the certificate file)."),
    ssl_keyfile_password: str | None = typer.Option(None, "--ssl-keyfile-password", help="Password of an encrypted private key."),
) -> None:
    """Run the HTTP scoring service (FastAPI on uvicorn) with limits, metrics, a review page and
    a hash bank of reviewers' decisions.

    POST /v1/score (images, animations, videos; ?model=ID), GET /v1/models /healthz /readyz /metrics
    /review /docs. SIGTERM finishes in-flight requests, then exits.
    """
    try:
        import uvicorn

        from ..detector import Detector
        from ..serve import ServeConfig
        from ..serve.app import create_app
        from ..serve.sentinel import SentinelConfig

        if safe_below is not None and nsfw_above is not None:  # both given: a bad pair fails now
            Thresholds(safe_below=safe_below, nsfw_above=nsfw_above)
        bands = {k: v for k, v in (("safe_below", safe_below), ("nsfw_above", nsfw_above)) if v is not None}
        limits = DecodeLimits.from_env(max_bytes, max_pixels, max_animation_pixels=max_animation_pixels)
        calibrated = load_calibration(calibration) if calibration is not None else None  # fails now, not later
        frame_options = FrameOptions(mode=frames, fps=fps, max_frames=max_frames, aggregate=aggregate,
                                     min_consecutive=min_consecutive)
        config = ServeConfig(
            data_dir=data_dir, max_body_bytes=max_body_bytes, max_files=max_files, limits=limits,
            max_concurrent_requests=max_concurrent, queue_size=queue_size, body_timeout_s=body_timeout,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms, batching=batching, decode_workers=decode_workers,
            media_workers=media_workers, max_concurrent_media=max_concurrent_media,
            api_keys=_read_keys(api_key, api_key_file), audit_rate=audit_rate, rate_limit=rate_limit,
            frames=frame_options, bank=_bank_path(bank, no_bank, data_dir), match_distance=match_distance,
            allow_origins=tuple(allow_origin), allowed_hosts=_allowed_hosts(host, allow_host),
            detect_attacks=SentinelConfig() if detect_attacks else None, on_attack=on_attack,  # type: ignore[arg-type]
            attack_delay_s=attack_delay, answer=answer,  # type: ignore[arg-type]
        )

        def loader(name: str | None, default: bool) -> Callable[[], Detector]:
            """The default model takes the bands given and the calibration; the others their own bands."""

            def load() -> Detector:
                det = Detector(backend, device, batch_size=max_batch, precision=precision, model=name,
                               limits=limits, workers=decode_workers, calibration=calibrated if default else None)
                if default and bands:
                    det.thresholds = replace(det.thresholds, **bands)
                return det

            return load

        for name in model:  # the models load in the background: a bad name fails now
            check_model_name(name)
        if len(set(model)) != len(model):
            raise ConfigError(f"a model is named twice: {', '.join(model)}", param="model")
        sources: Any = loader(model[0] if model else None, True)
        if len(model) > 1:
            sources = {name: loader(name, i == 0) for i, name in enumerate(model)}
        tls = _check_tls(ssl_certfile, ssl_keyfile, ssl_keyfile_password)
        app = create_app(config, sources)
        _check_listen(host, port)
    except NsfwlabError as exc:
        raise fail(exc, {"allow_origins": "--allow-origin", "allowed_hosts": "--allow-host",
                         "api_keys": "--api-key", "detect_attacks": "--detect-attacks", "on_attack": "--on-attack",
                         "answer": "--answer", "attack_delay_s": "--attack-delay", "model": "--model"}) from None
    if not config.api_keys and host not in _LOOPBACK:
        stderr.print(tagged("warning:", "yellow", f" listening on {host} without --api-key-file: anyone who can reach "
                            "it may use it"), highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout or None,
                **tls)


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _allowed_hosts(host: str, allow_host: list[str]) -> tuple[str, ...]:
    """The Host names served: on a loopback address its names (a page of another site whose name
    resolves to 127.0.0.1 would be same-origin: DNS rebinding) and ``--allow-host``; elsewhere
    ``--allow-host`` alone (none: any)."""
    if host in _LOOPBACK:
        return ("localhost", "127.0.0.1", "[::1]", *allow_host)
    return tuple(allow_host)


def _bank_path(bank: Path | None, no_bank: bool, data_dir: Path | None) -> Path | None:
    """The bank file: --bank, else bank.sqlite3 in --data-dir (when PDQ hashing is installed)."""
    if no_bank:
        if bank is not None:
            raise ConfigError("--bank and --no-bank contradict each other")
        return None
    if bank is not None or data_dir is None:
        return bank
    if importlib.util.find_spec("pdqhash") is None:
        stderr.print(tagged("warning:", "yellow", " no hash bank: pdqhash is not installed "
                            "(pip install 'nsfwlab[bank]')"), highlight=False)
        return None
    return data_dir / "bank.sqlite3"


#: A PEM certificate chain or key is a few KB; a bundle of a hundred certificates stays far below this.
_TLS_FILE_MAX_BYTES = 1 << 20


def _check_tls(certfile: Path | None, keyfile: Path | None, password: str | None) -> dict[str, Any]:
    """uvicorn's TLS options, after loading the certificate and key once: a missing or unreadable
    file, a wrong password or a key that does not match is a usage error now, not at startup."""
    if certfile is None:
        if keyfile is not None or password is not None:
            raise ConfigError("--ssl-keyfile and --ssl-keyfile-password need --ssl-certfile")
        return {}
    # Regular files under a cap first: OpenSSL would block for ever on a FIFO, or read a device.
    read_side_file(certfile, "the TLS certificate", max_bytes=_TLS_FILE_MAX_BYTES)
    if keyfile is not None:
        read_side_file(keyfile, "the TLS key", max_bytes=_TLS_FILE_MAX_BYTES)
    try:
        # Never OpenSSL's interactive prompt for an encrypted key without --ssl-keyfile-password.
        secret = password if password is not None else (lambda: "")
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, secret)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use the TLS certificate {certfile} and key {keyfile or certfile}: "
                          f"{getattr(exc, 'reason', None) or exc} (a PEM certificate and its matching key, and the "
                          "key's password if it is encrypted)") from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile) if keyfile else None,
            "ssl_keyfile_password": password}


def _check_listen(host: str, port: int) -> None:
    """A usage error now when the address cannot be bound (uvicorn would exit with status 3)."""
    if port == 0:
        return
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _write_audit(path: Path, store: ReviewStore) -> None:
    with atomic_output(path, what="audit log") as fh:
        writer = csv_writer(fh, lineterminator="\r\n")
        writer.writerow(["id", "review_id", "label", "previous_label", "reviewer", "key_id", "at", "at_unix"])
        for e in store.audit():
            at = datetime.fromtimestamp(e.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            writer.writerow([e.id, e.review_id, e.label.value, e.previous_label.value, e.reviewer, e.key_id or "",
                             at, f"{e.at:.3f}"])


review_app = typer.Typer(help="Human review: export the labelled images.", no_args_is_help=True)


@review_app.command("export")
def export_command(
    data_dir: Path = typer.Option(..., "--data-dir", help="The serve --data-dir holding review.sqlite3."),
    out: Path = typer.Option(..., "--out", help="Folder to write safe/ and nsfw/ (and labels.csv, audit.csv) into."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Write every image labelled safe or nsfw (latest decision wins) as OUT/safe/ and OUT/nsfw/,
    ready for `nsfwlab evaluate` and fine-tuning, plus OUT/labels.csv and OUT/audit.csv (every
    decision: who, when, which label, the label before). Re-running updates the folders: an image
    whose label changed moves."""
    from ..serve.review import ReviewStore, clean_name

    try:
        store = ReviewStore(data_dir, create=False)
        output_dir(out)
    except NsfwlabError as exc:
        raise fail(exc) from None
    with store:
        items = list(store.labelled())
        failed = 0
        rows: list[list[str]] = []
        for sub in ("safe", "nsfw"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        with progress_bar(len(items), "exporting", enabled=progress) as advance:
            for item in items:
                name = f"{item.sha256}.{item.ext}"
                target = out / item.status.value / name
                other = out / ("nsfw" if item.status.value == "safe" else "safe") / name
                try:
                    if other.exists():
                        other.unlink()
                    if not target.exists():
                        tmp = target.with_name(f".{name}.tmp")
                        shutil.copyfile(store.image_path(item), tmp)
                        os.replace(tmp, target)
                except OSError as exc:
                    failed += 1
                    stderr.print(tagged("error:", "bold red", f" {item.sha256}: {exc.strerror or exc}"), highlight=False)
                    advance(1, errors=1)
                    continue
                rows.append([f"{item.status.value}/{name}", item.status.value, f"{item.score:.6f}", item.reason.value,
                             item.reviewer or "", f"{item.labelled_at or 0:.3f}", clean_name(item.filename, ""),
                             item.model_version])
                advance(1)
        try:
            with atomic_output(out / "labels.csv", what="labels") as fh:
                writer = csv_writer(fh, lineterminator="\r\n")
                writer.writerow(["path", "label", "score", "reason", "reviewer", "labelled_at", "filename",
                                 "model_version"])
                writer.writerows(rows)
            _write_audit(out / "audit.csv", store)
        except NsfwlabError as exc:
            raise fail(exc) from None
    counts = {k: sum(1 for r in rows if r[1] == k) for k in ("safe", "nsfw")}
    stderr.print(f"exported {counts['safe']} safe and {counts['nsfw']} nsfw images to {out}", highlight=False)
    if failed:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))
