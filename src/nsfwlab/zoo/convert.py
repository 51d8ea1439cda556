"""Converting nsfwjs's TensorFlow.js models (inside the npm package's tarball) into one
tensors-only file: safetensors holding the plan's tensors in PyTorch layouts, with the plan itself
(:mod:`nsfwlab.zoo.plan`) as JSON in the file's metadata. The conversion is deterministic, so the
output's sha256 is fixed and pinned on the model card.

The tarball is read as data: only the named regular members, each under a size cap; the
``.min.js`` bundles are parsed as literals (:mod:`nsfwlab.zoo.tfjs`), never run.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, WeightsError
from ..sidefiles import parse_json
from .plan import plan_from_model_json
from .tfjs import bundle_export, read_weights, shard_bytes

__all__ = ["FORMAT", "convert_package", "read_converted", "write_converted"]

#: Metadata tag of a converted file, so that another safetensors file is refused clearly.
FORMAT = "nsfwlab-plan-v1"
_MEMBER_MAX_BYTES = 64 << 20
_HEADER_MAX_BYTES = 16 << 20


def _safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError:
        raise BackendUnavailableError("the model zoo needs the package 'safetensors': pip install 'nsfwlab[zoo]'") \
            from None
    return safetensors.numpy


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise WeightsError(f"the package holds no {name}") from None
    if not info.isfile() or info.size > _MEMBER_MAX_BYTES:
        raise WeightsError(f"{name} in the package is not a regular file under {_MEMBER_MAX_BYTES >> 20} MiB")
    handle = tar.extractfile(info)
    if handle is None:
        raise WeightsError(f"{name} in the package cannot be read")
    return handle.read()


def convert_package(archive: bytes, folder: str, shards: int) -> bytes:
    """The converted file (bytes) of the TF.js model in ``package/dist/models/<folder>`` of the npm
    tarball ``archive`` (split into ``shards`` weight bundles)."""
    prefix = f"package/dist/models/{folder}/"
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            model_js = _member(tar, prefix + "model.min.js").decode("utf-8")
            data = b"".join(shard_bytes(_member(tar, f"{prefix}group1-shard{i}of{shards}.min.js").decode("ascii"),
                                        f"weight shard {i} of {folder}") for i in range(1, shards + 1))
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"the package is not a readable npm tarball: {exc}") from None
    model = bundle_export(model_js, f"model.min.js of {folder}")
    if not isinstance(model, dict):
        raise WeightsError(f"model.min.js of {folder} does not export an object")
    weights = read_weights(model.get("weightsManifest"), data)
    plan, tensors, output = plan_from_model_json(model, weights)
    return write_converted(plan, tensors, output)


def write_converted(plan: list[dict[str, Any]], tensors: dict[str, np.ndarray], output: str) -> bytes:
    """A plan and its tensors as safetensors bytes (deterministic: sorted keys, fixed layout)."""
    # One metadata key: safetensors writes its metadata map in no fixed order.
    body = {"format": FORMAT, "output": output, "plan": plan}
    metadata = {"nsfwlab": json.dumps(body, sort_keys=True, separators=(",", ":"))}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(tensors.items())}
    return bytes(_safetensors().save(arrays, metadata=metadata))


def read_converted(data: bytes, what: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], str]:
    """The plan, tensors and output name of a converted file's bytes (already sha256-verified)."""
    if len(data) < 8:
        raise WeightsError(f"{what} is truncated")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_HEADER_MAX_BYTES, len(data) - 8):
        raise WeightsError(f"{what} is not a converted model (bad header)")
    header = parse_json(data[8:8 + size].decode("utf-8", "replace"), what, error=WeightsError)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    body = parse_json(str(meta.get("nsfwlab")), f"{what} metadata", error=WeightsError) \
        if isinstance(meta, dict) and "nsfwlab" in meta else None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise WeightsError(f"{what} is not a model converted by nsfwlab ({FORMAT})")
    plan = body.get("plan")
    if not isinstance(plan, list) or not all(isinstance(op, dict) for op in plan):
        raise WeightsError(f"{what} holds an invalid plan")
    try:
        tensors = _safetensors().load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for a malformed body
        raise WeightsError(f"{what} cannot be read: {exc}") from None
    return plan, tensors, str(body.get("output"))
