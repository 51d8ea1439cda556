"""A TensorFlow.js model as a *plan*: the network's operations in execution order, as plain data
(JSON-serialisable dicts), with its weights rearranged to PyTorch's layouts.

Two sources, the two formats nsfwjs 4.4.0 uses: a Keras *layers model* (``modelTopology`` with
``model_config``; MobileNetV2 and InceptionV3) and a TensorFlow *graph model* (``modelTopology``
with ``node``; MobileNetV2-mid). Both become the same small set of operations, which
:class:`nsfwlab.zoo.net.PlanNet` runs in PyTorch. Each operation is a dict::

    {"op": kind, "name": output name, "inputs": [input names], ...parameters}

kinds: ``conv`` (``stride``, ``padding`` "same"/"valid", ``groups``, ``bias``, ``act``), ``bn``
(``eps``), ``act`` (``fn`` relu / relu6 / softmax / linear), ``zeropad`` (``pad`` top, bottom,
left, right), ``pool`` (``kind`` max/avg, ``size``, ``stride``, ``padding``), ``add``, ``concat``,
``flatten`` (NHWC order, as Keras flattens), ``dense`` (``act``), ``affine`` (``mul``, ``sub``:
``x * mul - sub``). Tensors are keyed ``"<name>.weight"``, ``"<name>.bias"``, ``"<name>.mean"``,
``"<name>.var"``; conv kernels are OIHW, dense kernels (out, in).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ..errors import WeightsError

__all__ = ["OPS", "graph_plan", "keras_plan", "plan_from_model_json"]

OPS = ("conv", "bn", "act", "zeropad", "pool", "add", "concat", "flatten", "dense", "affine")
_ACTS = {"linear": "linear", "relu": "relu", "softmax": "softmax"}

Plan = list[dict[str, Any]]
Tensors = dict[str, np.ndarray]


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, in, out) -> (out, in, kh, kw)."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, in, mult) -> (in * mult, 1, kh, kw): TF's output channel c * mult + m is torch's
    group c, member m."""
    kh, kw, cin, mult = kernel.shape
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw))


def _get(weights: Tensors, name: str) -> np.ndarray:
    try:
        return weights[name]
    except KeyError:
        raise WeightsError(f"the weights hold no tensor {name!r} that the topology needs") from None


def _pair(value: Any, what: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return list(value)
    raise WeightsError(f"{what} must be two integers, got {value!r}")


def _keras_inputs(layer: dict[str, Any]) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise WeightsError(f"layer {layer.get('name')} is shared; only single-use layers are supported")
    return [str(entry[0]) for entry in nodes[0]] if nodes else []


def _keras_layer(layer: dict[str, Any], weights: Tensors, plan: Plan, tensors: Tensors,
                 alias: dict[str, str]) -> None:
    kind, cfg, name = layer.get("class_name"), layer.get("config") or {}, str(layer.get("name"))
    inputs = [alias.get(i, i) for i in _keras_inputs(layer)]
    if kind == "InputLayer":
        alias[name] = "input"
        return
    if kind in ("Dropout", "Activation") and (kind == "Dropout" or cfg.get("activation") == "linear"):
        alias[name] = inputs[0]
        return
    op: dict[str, Any] = {"name": name, "inputs": inputs}
    act = cfg.get("activation", "linear")
    if kind in ("Conv2D", "DepthwiseConv2D", "Dense") and act not in _ACTS:
        raise WeightsError(f"layer {name}: activation {act!r} is not supported")
    if kind in ("Conv2D", "DepthwiseConv2D"):
        if _pair(cfg.get("dilation_rate", 1), "dilation_rate") != [1, 1]:
            raise WeightsError(f"layer {name}: dilated convolutions are not supported")
        if kind == "Conv2D":
            weight = _conv_kernel(_get(weights, f"{name}/kernel"))
            groups = 1
        else:
            weight = _depthwise_kernel(_get(weights, f"{name}/depthwise_kernel"))
            groups = int(_get(weights, f"{name}/depthwise_kernel").shape[2])
        op.update(op="conv", stride=_pair(cfg.get("strides", 1), "strides"), padding=cfg.get("padding", "valid"),
                  groups=groups, bias=bool(cfg.get("use_bias")), act=_ACTS[act])
        tensors[f"{name}.weight"] = weight
        if op["bias"]:
            tensors[f"{name}.bias"] = _get(weights, f"{name}/bias")
    elif kind == "BatchNormalization":
        if cfg.get("axis") not in (-1, 3, [3], [-1]):
            raise WeightsError(f"layer {name}: batch normalisation over axis {cfg.get('axis')} is not supported")
        mean = _get(weights, f"{name}/moving_mean")
        op.update(op="bn", eps=float(cfg.get("epsilon", 1e-3)))
        tensors[f"{name}.mean"] = mean
        tensors[f"{name}.var"] = _get(weights, f"{name}/moving_variance")
        ones, zeros = np.ones_like(mean), np.zeros_like(mean)
        tensors[f"{name}.weight"] = _get(weights, f"{name}/gamma") if cfg.get("scale", True) else ones
        tensors[f"{name}.bias"] = _get(weights, f"{name}/beta") if cfg.get("center", True) else zeros
    elif kind == "ReLU":
        if cfg.get("negative_slope", 0) != 0 or cfg.get("threshold", 0) != 0:
            raise WeightsError(f"layer {name}: a leaky or thresholded ReLU is not supported")
        top = cfg.get("max_value")
        if top not in (None, 6, 6.0):
            raise WeightsError(f"layer {name}: ReLU max_value {top} is not supported")
        op.update(op="act", fn="relu" if top is None else "relu6")
    elif kind == "Activation":
        if act not in _ACTS:
            raise WeightsError(f"layer {name}: activation {act!r} is not supported")
        op.update(op="act", fn=_ACTS[act])
    elif kind == "ZeroPadding2D":
        (top, bottom), (left, right) = (_pair(p, "padding") for p in cfg["padding"])
        op.update(op="zeropad", pad=[top, bottom, left, right])
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        op.update(op="pool", kind="max" if kind.startswith("Max") else "avg", size=_pair(cfg["pool_size"], "pool_size"),
                  stride=_pair(cfg.get("strides") or cfg["pool_size"], "strides"), padding=cfg.get("padding", "valid"))
    elif kind == "Add":
        op.update(op="add")
    elif kind == "Concatenate":
        if cfg.get("axis") not in (-1, 3):
            raise WeightsError(f"layer {name}: concatenation over axis {cfg.get('axis')} is not supported")
        op.update(op="concat")
    elif kind == "Flatten":
        op.update(op="flatten")
    elif kind == "Dense":
        op.update(op="dense", bias=bool(cfg.get("use_bias", True)), act=_ACTS[act])
        tensors[f"{name}.weight"] = np.ascontiguousarray(_get(weights, f"{name}/kernel").T)
        if op["bias"]:
            tensors[f"{name}.bias"] = _get(weights, f"{name}/bias")
    else:
        raise WeightsError(f"layer {name}: Keras layer type {kind!r} is not supported")
    if op.get("padding") not in (None, "same", "valid"):
        raise WeightsError(f"layer {name}: padding {op['padding']!r} is not supported")
    plan.append(op)


def keras_plan(topology: dict[str, Any], weights: Tensors) -> tuple[Plan, Tensors, str]:
    """The plan of a Keras functional model, its tensors and its output's name."""
    config = (topology.get("model_config") or {}).get("config") or {}
    layers, outputs = config.get("layers"), config.get("output_layers")
    if not isinstance(layers, list) or not isinstance(outputs, list) or len(outputs) != 1:
        raise WeightsError("the Keras topology must list its layers and exactly one output")
    plan: Plan = []
    tensors: Tensors = {}
    alias: dict[str, str] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise WeightsError("a Keras layer entry is not an object")
        _keras_layer(layer, weights, plan, tensors, alias)
    out = str(outputs[0][0])
    return plan, tensors, alias.get(out, out)


def _attr(node: dict[str, Any], key: str) -> Any:
    value = (node.get("attr") or {}).get(key) or {}
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "list" in value:
        lst = value["list"]
        return [base64.b64decode(s).decode() for s in lst.get("s", [])] or [int(i) for i in lst.get("i", [])]
    if "b" in value:
        return bool(value["b"])
    return None


def _graph_node(node: dict[str, Any], weights: Tensors, plan: Plan, tensors: Tensors, alias: dict[str, str]) -> None:
    kind, name = node.get("op"), str(node.get("name"))
    inputs = [alias.get(i, i) for i in node.get("input", [])]
    consts = [weights.get(i) for i in node.get("input", [])]
    op: dict[str, Any] = {"name": name, "inputs": inputs[:1]}
    if kind in ("Const",):
        return
    if kind == "Placeholder":
        alias[name] = "input"
        return
    if kind == "Identity":
        alias[name] = inputs[0]
        return
    if kind in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul"):
        fused = _attr(node, "fused_ops") or []
        if fused[:1] != ["BiasAdd"] or fused[1:] not in ([], ["Relu"], ["Relu6"]) or consts[1] is None:
            raise WeightsError(f"node {name}: fused operations {fused} are not supported")
        act = {(): "linear", ("Relu",): "relu", ("Relu6",): "relu6"}[tuple(fused[1:])]
        bias = _get(weights, node["input"][2])
        tensors[f"{name}.bias"] = bias
        if kind == "_FusedMatMul":
            if _attr(node, "transpose_a") or _attr(node, "transpose_b"):
                raise WeightsError(f"node {name}: transposed matrix products are not supported")
            op.update(op="dense", bias=True, act=act)
            tensors[f"{name}.weight"] = np.ascontiguousarray(consts[1].T)
        else:
            if _attr(node, "data_format") not in (None, "NHWC") or (_attr(node, "dilations") or [1] * 4) != [1] * 4:
                raise WeightsError(f"node {name}: only NHWC, undilated convolutions are supported")
            strides = _attr(node, "strides") or [1, 1, 1, 1]
            padding = str(_attr(node, "padding")).lower()
            if padding not in ("same", "valid"):
                raise WeightsError(f"node {name}: padding {padding!r} is not supported")
            depthwise = kind == "FusedDepthwiseConv2dNative"
            tensors[f"{name}.weight"] = (_depthwise_kernel if depthwise else _conv_kernel)(consts[1])
            op.update(op="conv", stride=strides[1:3], padding=padding, bias=True, act=act,
                      groups=int(consts[1].shape[2]) if depthwise else 1)
    elif kind in ("Mul", "Sub"):
        scalar = next((c for c in consts if c is not None), None)
        data = [i for i, c in zip(inputs, consts, strict=True) if c is None]
        if scalar is None or scalar.size != 1 or len(data) != 1 or (kind == "Sub" and consts[1] is None):
            raise WeightsError(f"node {name}: only a tensor {kind} a scalar constant is supported")
        value = float(scalar.reshape(()))
        op.update(op="affine", inputs=data, mul=value if kind == "Mul" else 1.0, sub=value if kind == "Sub" else 0.0)
    elif kind == "AddV2" or kind == "Add":
        op.update(op="add", inputs=inputs)
    elif kind in ("AvgPool", "MaxPool"):
        ksize, strides = _attr(node, "ksize"), _attr(node, "strides")
        op.update(op="pool", kind="avg" if kind == "AvgPool" else "max", size=ksize[1:3], stride=strides[1:3],
                  padding=str(_attr(node, "padding")).lower())
    elif kind == "Squeeze":
        if _attr(node, "squeeze_dims") != [1, 2]:
            raise WeightsError(f"node {name}: only squeezing the spatial dimensions is supported")
        op.update(op="flatten")
    elif kind == "Softmax":
        op.update(op="act", fn="softmax")
    elif kind in ("Relu", "Relu6"):
        op.update(op="act", fn=kind.lower())
    else:
        raise WeightsError(f"node {name}: TensorFlow operation {kind!r} is not supported")
    plan.append(op)


def graph_plan(topology: dict[str, Any], weights: Tensors) -> tuple[Plan, Tensors, str]:
    """The plan of a TF graph model (nodes in the order given, which the converter writes
    topologically), its tensors and its output's name (the last node)."""
    nodes = topology.get("node")
    if not isinstance(nodes, list) or not nodes:
        raise WeightsError("the graph topology holds no nodes")
    plan: Plan = []
    tensors: Tensors = {}
    alias: dict[str, str] = {}
    for node in nodes:
        if not isinstance(node, dict):
            raise WeightsError("a graph node is not an object")
        _graph_node(node, weights, plan, tensors, alias)
    last = str(nodes[-1].get("name"))
    return plan, tensors, alias.get(last, last)


def plan_from_model_json(model: Any, weights: Tensors) -> tuple[Plan, Tensors, str]:
    """Either kind of TF.js model: its plan, tensors and output name."""
    topology = model.get("modelTopology") if isinstance(model, dict) else None
    if not isinstance(topology, dict):
        raise WeightsError("the model holds no modelTopology")
    if "model_config" in topology:
        return keras_plan(topology, weights)
    if "node" in topology:
        return graph_plan(topology, weights)
    raise WeightsError("the modelTopology is neither a Keras layers model nor a graph model")
