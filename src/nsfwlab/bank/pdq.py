"""PDQ perceptual hashes (Meta's PDQ through PyPI ``pdqhash``): computing, parsing, distances.

A hash is 256 bits, written as 64 lower-case hex digits in Meta's order (the format of
ThreatExchange lists), held in memory as four big-endian ``uint64`` words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DecodeLimits
from ..errors import ConfigError
from ..imageio import ImageInput, load_image

__all__ = ["HASH_HEX_LEN", "MAX_HASH_SIDE", "QUALITY_FLOOR", "PdqHash", "hamming", "hash_words", "parse_hash",
           "pdq_hash"]

#: Meta's advice: hashes of quality below 50 (flat or featureless images) are too unreliable to match.
QUALITY_FLOOR = 50
HASH_HEX_LEN = 64
#: Larger images are reduced (Pillow's box-filtered ``reduce``, an integer factor) to at most this
#: side before hashing: PDQ blurs everything down to 64x64 anyway, and a 100-megapixel image would
#: otherwise take two 400 MB float buffers. The hash moves by a few bits at most.
MAX_HASH_SIDE = 2048
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class PdqHash:
    """A PDQ hash (``hex``) and, when it was computed here or given, its quality (0-100)."""

    hex: str
    quality: int | None = None

    @property
    def usable(self) -> bool:
        """False when the quality is known and below :data:`QUALITY_FLOOR`."""
        return self.quality is None or self.quality >= QUALITY_FLOOR

    def words(self) -> np.ndarray:
        return hash_words([self.hex])[0]


def parse_hash(text: str) -> str:
    """The canonical form (64 lower-case hex digits) of a PDQ hash, or a ConfigError saying why not."""
    value = text.strip().lower()
    if len(value) != HASH_HEX_LEN or not set(value) <= _HEX:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigError(f"not a PDQ hash: {shown!r} (expected {HASH_HEX_LEN} hex digits)")
    return value


def hash_words(hexes: list[str]) -> np.ndarray:
    """``(n, 4)`` uint64 words of canonical hex hashes (one ``bytes.fromhex`` for all of them)."""
    raw = bytes.fromhex("".join(hexes))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), 4)


def hamming(a: str, b: str) -> int:
    """The number of differing bits between two hex hashes."""
    return (int(parse_hash(a), 16) ^ int(parse_hash(b), 16)).bit_count()


def pdq_hash(image: ImageInput, limits: DecodeLimits | None = None) -> PdqHash:
    """Decode ``image`` with the safe decoder and compute its PDQ hash and quality.

    Raises the decoder's :class:`~nsfwlab.errors.ImageError` on bad input.
    """
    try:
        import pdqhash
    except ImportError:
        raise ConfigError("PDQ hashing needs the pdqhash package: pip install 'nsfwlab[bank]'") from None

    img = load_image(image, limits)
    factor = -(-max(img.size) // MAX_HASH_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(img, dtype=np.uint8)))
    return PdqHash(np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality))
