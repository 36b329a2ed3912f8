"""PoseNet's released weights (TF.js graph models) into `hvpose.models.mobilenet.MobileNetPoseNet`.

The importer walks the graph from its input placeholder: a chain of `Conv2D` / `DepthwiseConv2dNative` nodes,
each followed by `BiasAdd` and an activation (`Relu6`, `Relu`), whose own attributes (strides, dilations, padding,
data format) become the layer specs; the four heads are the 1x1 convolutions that read the last activation
(`heatmap*`, `offset*`, `displacement_fwd*`, `displacement_bwd*` in their names). Nothing about the layout is
assumed, so other PoseNet MobileNet variants (multipliers 0.5-1.0, output strides 8/16) load the same way.

The model normalises its uint8 input as PoseNet expects (`image / 127.5 - 1`, `preprocess="unit"`) and takes
crop sizes of the form s*n+1 for output stride s.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hvpose.errors import WeightFileError
from hvpose.models.mobilenet import ConvSpec, MobileNetPoseNet
from hvpose.pretrained.tfjs import GraphModel, Node, read_graph_model

_CONV_OPS = {"Conv2D": "conv", "DepthwiseConv2dNative": "depthwise"}
_ACTIVATION_OPS = {"Relu6": "relu6", "Relu": "relu"}
_HEADS = ("heatmap", "offset", "displacement_fwd", "displacement_bwd")


def _pair(values: tuple[int, ...], node: Node, attr: str, path: str) -> tuple[int, int]:
    """NHWC [1, h, w, 1] attribute -> (h, w)."""
    if len(values) != 4 or values[0] != 1 or values[3] != 1:
        raise WeightFileError(f"{path}: node {node.name!r}: unsupported {attr} {list(values)}")
    return int(values[1]), int(values[2])


def _conv(graph: GraphModel, node: Node) -> tuple[np.ndarray, dict[str, Any]]:
    """A convolution node's kernel (as Flax expects it) and its stride/dilation/padding."""
    path = graph.path
    if node.attrs.get("data_format", "NHWC") != "NHWC":
        raise WeightFileError(f"{path}: node {node.name!r}: data format {node.attrs['data_format']} is not NHWC")
    if node.inputs[1] not in graph.weights:
        raise WeightFileError(f"{path}: node {node.name!r}: kernel {node.inputs[1]!r} is not a stored weight")
    kernel = graph.weights[node.inputs[1]]
    if node.op == "DepthwiseConv2dNative":  # TF (h, w, in, multiplier) -> Flax grouped (h, w, 1, in * multiplier)
        h, w, channels, multiplier = kernel.shape
        kernel = kernel.reshape(h, w, 1, channels * multiplier)
    padding = node.attrs.get("padding", "SAME")
    if padding not in ("SAME", "VALID"):
        raise WeightFileError(f"{path}: node {node.name!r}: unsupported padding {padding!r}")
    return kernel, {"stride": _pair(node.attrs.get("strides", (1, 1, 1, 1)), node, "strides", path),
                    "dilation": _pair(node.attrs.get("dilations", (1, 1, 1, 1)), node, "dilations", path),
                    "padding": padding}


def _only_consumer(graph: GraphModel, node: Node, ops: set[str] | dict[str, str]) -> Node | None:
    found = [c for c in graph.consumers(node.name) if c.op in ops]
    return found[0] if len(found) == 1 else None


def load_posenet_tfjs(model_json: str | os.PathLike[str], map_stride: int = 1) -> tuple[MobileNetPoseNet, dict]:
    """Reads a PoseNet TF.js graph model; returns `(model, variables)` for `model.apply(variables, crops)`.

    Raises `WeightFileError` with one line naming the file and the problem when the file is missing, unreadable,
    or not a chain of convolutions with PoseNet's heads.
    """
    graph = read_graph_model(model_json)
    try:
        return _build(graph, map_stride)
    except (KeyError, IndexError) as error:
        raise WeightFileError(f"{graph.path}: the graph does not have PoseNet's structure (missing {error})") \
            from None


def _build(graph: GraphModel, map_stride: int) -> tuple[MobileNetPoseNet, dict]:
    path = graph.path
    placeholders = [node for node in graph.nodes.values() if node.op == "Placeholder"]
    if len(placeholders) != 1:
        raise WeightFileError(f"{path}: expected one input placeholder, found {len(placeholders)}")
    specs: list[ConvSpec] = []
    params: dict[str, Any] = {}
    current = placeholders[0]
    while True:
        conv = _only_consumer(graph, current, _CONV_OPS)
        if conv is None or any(head in conv.name for head in _HEADS):
            break
        kernel, geometry = _conv(graph, conv)
        bias_add = _only_consumer(graph, conv, {"BiasAdd"})
        activation = bias_add and _only_consumer(graph, bias_add, _ACTIVATION_OPS)
        if activation is None:
            raise WeightFileError(f"{path}: node {conv.name!r} is not followed by BiasAdd and Relu6/Relu")
        name = f"conv{len(specs)}_{_CONV_OPS[conv.op]}"
        specs.append(ConvSpec(_CONV_OPS[conv.op], int(kernel.shape[-1]), tuple(kernel.shape[:2]),
                              activation=_ACTIVATION_OPS[activation.op], **geometry))
        params[name] = {"kernel": kernel, "bias": graph.weights[bias_add.inputs[1]]}
        current = activation
    if not specs:
        raise WeightFileError(f"{path}: no convolution chain after the input placeholder")
    heads: dict[str, Node] = {}
    for node in graph.consumers(current.name):
        matches = [head for head in _HEADS if head in node.name]
        if node.op == "Conv2D" and matches:
            heads[max(matches, key=len)] = node
    for required in ("heatmap", "offset"):
        if required not in heads:
            raise WeightFileError(f"{path}: no {required} head after {current.name!r}")
    for head, node in heads.items():
        kernel, geometry = _conv(graph, node)
        if kernel.shape[:2] != (1, 1) or geometry["stride"] != (1, 1):
            raise WeightFileError(f"{path}: head {node.name!r} is not a 1x1 stride-1 convolution")
        bias_add = _only_consumer(graph, node, {"BiasAdd"})
        if bias_add is None:
            raise WeightFileError(f"{path}: head {node.name!r} has no BiasAdd")
        params[head] = {"kernel": kernel, "bias": graph.weights[bias_add.inputs[1]]}
    num_keypoints = int(params["heatmap"]["kernel"].shape[-1])
    if params["offset"]["kernel"].shape[-1] != 2 * num_keypoints:
        raise WeightFileError(f"{path}: offset head has {params['offset']['kernel'].shape[-1]} channels, "
                              f"expected {2 * num_keypoints}")
    has_displacements = "displacement_fwd" in heads and "displacement_bwd" in heads
    num_edges = int(params["displacement_fwd"]["kernel"].shape[-1]) // 2 if has_displacements else 0
    if not has_displacements:
        params.pop("displacement_fwd", None)
        params.pop("displacement_bwd", None)
    model = MobileNetPoseNet(layers=tuple(specs), num_keypoints=num_keypoints, num_edges=num_edges,
                             map_stride=map_stride)
    variables = {"params": {name: {key: np.asarray(value, np.float32) for key, value in layer.items()}
                            for name, layer in params.items()}}
    return model, variables


__all__ = ["load_posenet_tfjs"]
