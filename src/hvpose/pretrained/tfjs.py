"""Reading TensorFlow.js graph models (`model.json` + binary weight shards) without TensorFlow.

A graph model's JSON holds `modelTopology.node` (the GraphDef as JSON: name, op, inputs, attributes) and
`weightsManifest`: groups of shard files whose concatenated bytes hold the weights in manifest order. A weight is
stored as its dtype (float32, int32) or quantised: `quantization = {dtype: uint8|uint16, min, scale}` with
`value = min + scale * q` (the converter's affine scheme), or `{dtype: float16}`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import numpy as np

from hvpose.errors import WeightFileError

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16, "bool": np.bool_}


@dataclasses.dataclass(frozen=True)
class Node:
    """One GraphDef node: its op, inputs (names, without `:0` or `^` control markers) and decoded attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GraphModel:
    nodes: dict[str, Node]  # by name, in file order
    weights: dict[str, np.ndarray]  # dequantised, by weight (Const node) name
    path: str

    def consumers(self, name: str) -> list[Node]:
        return [node for node in self.nodes.values() if name in node.inputs]


def _decode_attr(value: dict[str, Any]) -> Any:
    """GraphDef AttrValue as JSON -> a Python value (ints for lists of ints, str for strings)."""
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return tuple(int(v) for v in items["i"])
        if "f" in items:
            return tuple(float(v) for v in items["f"])
        if "s" in items:
            return tuple(base64.b64decode(v).decode() for v in items["s"])
        return ()
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return value["type"]
    return value


def _dequantise(raw: bytes, spec: dict[str, Any], path: str) -> np.ndarray:
    shape = tuple(int(n) for n in spec["shape"])
    quantization = spec.get("quantization")
    stored = (quantization or {}).get("dtype", spec["dtype"])
    if stored not in _DTYPES:
        raise WeightFileError(f"{path}: weight {spec['name']!r} has unsupported dtype {stored!r}")
    values = np.frombuffer(raw, _DTYPES[stored]).reshape(shape)
    if quantization is None or stored == "float16":
        return values.astype(_DTYPES[spec["dtype"]])
    if "scale" not in quantization or "min" not in quantization:
        raise WeightFileError(f"{path}: weight {spec['name']!r}: {stored} quantisation without min/scale")
    dequantised = quantization["min"] + quantization["scale"] * values.astype(np.float64)
    if np.issubdtype(_DTYPES[spec["dtype"]], np.integer):
        dequantised = np.round(dequantised)  # as TF.js does for quantised int32 weights
    return dequantised.astype(_DTYPES[spec["dtype"]])


def _weight_bytes(spec: dict[str, Any], path: str) -> int:
    stored = (spec.get("quantization") or {}).get("dtype", spec["dtype"])
    if stored not in _DTYPES:
        raise WeightFileError(f"{path}: weight {spec['name']!r} has unsupported dtype {stored!r}")
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(_DTYPES[stored]).itemsize


def read_graph_model(model_json: str | os.PathLike[str]) -> GraphModel:
    """Parses a TF.js graph model and dequantises its weights; problems raise `WeightFileError` (one line)."""
    path = os.fspath(model_json)
    try:
        with open(path, "rb") as file:
            model = json.load(file)
    except FileNotFoundError:
        raise WeightFileError(f"{path}: no such file (a TF.js graph model's model.json)") from None
    except (OSError, ValueError) as error:
        raise WeightFileError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(model, dict) or "modelTopology" not in model or "weightsManifest" not in model:
        raise WeightFileError(f"{path}: not a TF.js graph model (no modelTopology/weightsManifest)")
    if model.get("format", "graph-model") != "graph-model":
        raise WeightFileError(f"{path}: format {model.get('format')!r} is not a TF.js graph model")
    try:
        return _parse(model, path)
    except (KeyError, TypeError, ValueError) as error:
        raise WeightFileError(f"{path}: malformed TF.js graph model ({type(error).__name__}: {error})") from None


def _parse(model: dict[str, Any], path: str) -> GraphModel:
    nodes = {}
    for entry in model["modelTopology"].get("node", []):
        inputs = tuple(name.lstrip("^").split(":")[0] for name in entry.get("input", []))
        nodes[entry["name"]] = Node(entry["name"], entry["op"], inputs,
                                    {key: _decode_attr(value) for key, value in entry.get("attr", {}).items()})
    folder = os.path.dirname(path)
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        data = bytearray()
        for shard in group["paths"]:
            try:
                with open(os.path.join(folder, shard), "rb") as file:
                    data += file.read()
            except OSError as error:
                raise WeightFileError(f"{path}: weight shard {shard!r} unreadable ({error.strerror})") from None
        position = 0
        for spec in group["weights"]:
            size = _weight_bytes(spec, path)
            if position + size > len(data):
                raise WeightFileError(f"{path}: weight shards end early at {spec['name']!r} "
                                      f"({len(data)} bytes, {position + size} needed)")
            weights[spec["name"]] = _dequantise(bytes(data[position:position + size]), spec, path)
            position += size
        if position != len(data):
            raise WeightFileError(f"{path}: weight shards {group['paths']} hold {len(data)} bytes, the manifest "
                                  f"describes {position}")
    return GraphModel(nodes=nodes, weights=weights, path=path)


__all__ = ["GraphModel", "Node", "read_graph_model"]
