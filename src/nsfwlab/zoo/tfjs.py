"""Reading TensorFlow.js models without running any JavaScript.

nsfwjs ships each model as browserify bundles: ``model.min.js`` whose one module is
``exports={modelTopology: ..., weightsManifest: ...}`` (a JavaScript object literal, not JSON:
bare keys, ``!0``/``!1`` for true/false, ``.5`` for 0.5) and ``group1-shardNofM.min.js`` whose one
module is ``exports="<base64 of the shard>"``. :func:`parse_js_literal` reads exactly that subset of
JavaScript (literals only: anything else is refused), so nothing in the package is ever executed.

:func:`read_weights` turns the weight manifest and the shard bytes into float32 arrays the way
TensorFlow.js does: a quantised weight is ``q * scale + min`` computed in double precision and
stored as float32 (``io.decodeWeights``); ``float16`` quantisation is widened to float32.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np

from ..errors import WeightsError

__all__ = ["bundle_export", "parse_js_literal", "read_weights"]

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"[^"\\]*(?:\\.[^"\\]*)*")|(?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"""
    r"""|(?P<bool>!0|!1)|(?P<id>[A-Za-z_$][\w$]*)|(?P<punct>[{}\[\]:,]))"""
)
_CONSTANTS = {"null": None, "true": True, "false": False}
#: Deepest nesting a model topology needs (a Keras config is ~8 levels); bounds the recursion.
_MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def token(self, pos: int) -> tuple[str, str, int]:
        match = _TOKEN.match(self.text, pos)
        if match is None or match.lastgroup is None:
            raise WeightsError(f"unexpected JavaScript at offset {pos}: {self.text[pos:pos + 30]!r}")
        return match.lastgroup, match.group(match.lastgroup), match.end()

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        if depth > _MAX_DEPTH:
            raise WeightsError("JavaScript literal nested too deeply")
        kind, text, pos = self.token(pos)
        if kind == "str":
            return json.loads(text), pos
        if kind == "num":
            return (float(text) if any(c in text for c in ".eE") else int(text)), pos
        if kind == "bool":
            return text == "!0", pos
        if kind == "id" and text in _CONSTANTS:
            return _CONSTANTS[text], pos
        if text == "[":
            return self.array(pos, depth)
        if text == "{":
            return self.object(pos, depth)
        raise WeightsError(f"unexpected {text!r} in a JavaScript literal at offset {pos}")

    def array(self, pos: int, depth: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        if self.token(pos)[1] == "]":
            return out, self.token(pos)[2]
        while True:
            item, pos = self.value(pos, depth + 1)
            out.append(item)
            _, sep, pos = self.token(pos)
            if sep == "]":
                return out, pos
            if sep != ",":
                raise WeightsError(f"expected ',' or ']' at offset {pos}, got {sep!r}")

    def object(self, pos: int, depth: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        if self.token(pos)[1] == "}":
            return out, self.token(pos)[2]
        while True:
            kind, key, pos = self.token(pos)
            if kind == "str":
                key = json.loads(key)
            elif kind not in ("id", "num"):
                raise WeightsError(f"expected a key at offset {pos}, got {key!r}")
            _, colon, pos = self.token(pos)
            if colon != ":":
                raise WeightsError(f"expected ':' at offset {pos}, got {colon!r}")
            out[key], pos = self.value(pos, depth + 1)
            _, sep, pos = self.token(pos)
            if sep == "}":
                return out, pos
            if sep != ",":
                raise WeightsError(f"expected ',' or '}}' at offset {pos}, got {sep!r}")


def parse_js_literal(text: str, start: int = 0) -> tuple[Any, int]:
    """The JavaScript literal (object, array, string, number, ``!0``/``!1``, null) at ``start`` of
    ``text`` and the offset just after it; a :class:`WeightsError` for anything else."""
    return _Parser(text).value(start, 0)


_EXPORT = re.compile(r"\.exports=(?=[{\"])")


def bundle_export(text: str, what: str) -> Any:
    """The literal a browserify bundle's module exports (``exports={...}`` or ``exports="..."``)."""
    match = _EXPORT.search(text)
    if match is None:
        raise WeightsError(f"{what} is not a bundle nsfwjs ships (no exported literal found)")
    value, _ = parse_js_literal(text, match.end())
    return value


def shard_bytes(text: str, what: str) -> bytes:
    """The bytes of one weight shard bundle (its exported base64 string)."""
    value = bundle_export(text, what)
    if not isinstance(value, str):
        raise WeightsError(f"{what} does not export a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WeightsError(f"{what} holds invalid base64") from None


_QUANTISED: dict[str, np.dtype] = {"uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}
_PLAIN: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}


def read_weights(manifest: Any, data: bytes) -> dict[str, np.ndarray]:
    """name -> float32 (or int32) array for every weight of a TF.js ``weightsManifest``, reading the
    concatenated shard bytes ``data`` in manifest order, dequantised as TensorFlow.js does."""
    if not isinstance(manifest, list):
        raise WeightsError("weightsManifest must be a list of groups")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest:
        specs = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(specs, list):
            raise WeightsError("a weightsManifest group has no 'weights' list")
        for spec in specs:
            name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("dtype")
            if not isinstance(name, str) or not isinstance(shape, list) or dtype not in _PLAIN:
                raise WeightsError(f"weight spec {str(spec)[:80]} is not one this reader knows")
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise WeightsError(f"weight {name} has an invalid shape {shape}")
            count = int(np.prod(shape, dtype=np.int64))
            quant = spec.get("quantization")
            stored: np.dtype | None = _PLAIN[dtype] if quant is None else _QUANTISED.get(str(quant.get("dtype")))
            if stored is None:
                raise WeightsError(f"weight {name}: unknown quantisation {quant}")
            size = count * stored.itemsize
            if offset + size > len(data):
                raise WeightsError(f"weight data ends before weight {name}: the shards are truncated")
            raw = np.frombuffer(data, dtype=stored, count=count, offset=offset)
            offset += size
            if quant is None:
                values = raw.copy()
            elif quant["dtype"] == "float16":
                values = raw.astype(np.float32)
            else:
                scale, low = quant.get("scale"), quant.get("min")
                if not isinstance(scale, int | float) or not isinstance(low, int | float):
                    raise WeightsError(f"weight {name}: quantisation without numeric scale and min")
                values = (raw.astype(np.float64) * float(scale) + float(low)).astype(np.float32)
            out[name] = values.reshape(shape)
    if offset != len(data):
        raise WeightsError(f"weight data holds {len(data) - offset} bytes more than the manifest describes")
    return out
