"""Graph passes run on an ONNX model before onnx2torch converts it.

* :func:`read_model`: load a file (with external data beside it) or raise
  :class:`ModelFileError` naming what is missing or corrupt.
* :func:`sort_and_validate`: every value is defined before use (a truncated file that
  still parses loses initializers); nodes are put in topological order.
* :func:`fold_constants`: ``Constant`` nodes and ``Identity(initializer)`` nodes become
  initializers. The legacy exporter de-duplicates equal weights, so EDSR/RCAN/CARN
  ``add_mean.weight`` is ``Identity(sub_mean.weight)``, and onnx2torch needs conv weights
  to be initializers (study §2).
* :func:`infer_shapes`: best-effort shape inference (converters read ranks from it).
* :func:`convert_opset`: ``onnx.version_converter`` to another opset, ``None`` on failure.

Every pass keeps node and value names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from glam.errors import ModelFileError
from onnx import numpy_helper

__all__ = [
    "convert_opset",
    "fold_constants",
    "infer_shapes",
    "model_opset",
    "read_model",
    "sort_and_validate",
]


def _tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Every tensor of a graph and of its subgraphs (initializers and attributes)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def read_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data.

    Parameters
    ----------
    path:
        The ``.onnx`` file; external data files are looked up relative to its folder.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ModelFileError
        For a missing, unreadable, corrupt or truncated file, or a missing external data file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            f"model file {str(p)!r} does not exist; pass the path of an .onnx file"
        )
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise ModelFileError(
            f"{str(p)!r} is not a readable ONNX model ({type(exc).__name__}); the file may be "
            "truncated or corrupt: re-export or re-download it"
        ) from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelFileError(
            f"{str(p)!r} holds no ONNX graph (no nodes); the file may be truncated or not an "
            "ONNX model"
        )
    base = p.resolve().parent
    external = False
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = base / location
        if location and not _inside(base, location):
            raise ModelFileError(
                f"external data location {location!r} of tensor {tensor.name!r} points outside "
                f"the model folder {str(base)!r}; glam only reads data files beside the model "
                "(re-export it with its data file next to the .onnx)"
            )
        if not location or not target.is_file():
            raise ModelFileError(
                f"external data file {str(target)!r} of tensor {tensor.name!r} is missing; keep "
                f"it beside {p.name!r} (a model exported with external data needs both files)"
            )
        need = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if need and target.stat().st_size < need:
            raise ModelFileError(
                f"external data file {str(target)!r} is truncated ({target.stat().st_size} bytes, "
                f"tensor {tensor.name!r} needs {need}); re-export or re-download it"
            )
    if external:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError/OSError/...
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"cannot read the external data of {str(p)!r}: {msg}; keep the data file beside "
                "the model"
            ) from None
    return model


def _inside(base: Path, location: str) -> bool:
    """Whether ``location`` (an external-data path) stays inside ``base``, links resolved.

    Decided from the name and ``base``'s resolved path only: an absolute path, a drive, a
    ``..`` component or a backslash is refused before the file system is asked anything
    about the target.
    """
    if "\x00" in location or "\\" in location or location.startswith("/") or (
        len(location) > 1 and location[1] == ":"
    ):
        return False
    if any(part == ".." for part in Path(location).parts):
        return False
    try:
        resolved = (base / location).resolve()
    except (OSError, RuntimeError):
        return False
    return resolved == base or base in resolved.parents


def model_opset(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` (``""`` = ai.onnx); 1 when it declares none."""
    for op in model.opset_import:
        if op.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(op.version)
    return 1


def sort_and_validate(model: onnx.ModelProto, path: str = "model") -> int:
    """Check that every value is defined and put nodes in topological order, in place.

    Parameters
    ----------
    model:
        The model (modified in place when its nodes are out of order).
    path:
        Shown in error messages.

    Returns
    -------
    int
        How many nodes moved (0 for an already sorted graph).

    Raises
    ------
    ModelFileError
        When a node reads a value that nothing defines or the graph has a cycle: the file is
        incomplete or corrupt.
    """
    graph = model.graph
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer}
    producers: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producers[out] = i
    for node in graph.node:
        for name in node.input:
            if name and name not in defined and name not in producers:
                raise ModelFileError(
                    f"value {name!r} read by {node.op_type} node {node.name!r} is defined nowhere "
                    f"in {path!r} (no initializer, input or node output): the file is incomplete "
                    "or corrupt; re-export or re-download it"
                )
    for out in graph.output:
        if out.name not in defined and out.name not in producers:
            raise ModelFileError(
                f"graph output {out.name!r} of {path!r} is produced by no node: the file is "
                "incomplete or corrupt; re-export or re-download it"
            )
    order: list[int] = []
    done = set(defined)
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            node = graph.node[i]
            if all(not n or n in done for n in node.input):
                order.append(i)
                done.update(o for o in node.output if o)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            node = graph.node[rest[0]]
            raise ModelFileError(
                f"the graph of {path!r} has a cycle through {node.op_type} node {node.name!r}; the "
                "file is corrupt"
            )
        pending = rest
    moved = sum(1 for k, i in enumerate(order) if k != i)
    if moved:
        nodes = [copy.deepcopy(graph.node[i]) for i in order]
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a ``Constant`` node as a tensor named after its output, or ``None``."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    if attr.name == "value_float":
        return numpy_helper.from_array(np.array(attr.f, dtype=np.float32), name)
    if attr.name == "value_floats":
        return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32), name)
    if attr.name == "value_int":
        return numpy_helper.from_array(np.array(attr.i, dtype=np.int64), name)
    if attr.name == "value_ints":
        return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64), name)
    return None


def fold_constants(model: onnx.ModelProto) -> int:
    """Fold ``Constant`` and ``Identity(initializer)`` nodes into initializers, in place.

    A node whose output is also a graph output is kept (onnx2torch needs graph outputs to
    be node outputs). Names are kept: the new initializer takes the node's output name.

    Returns
    -------
    int
        How many nodes were folded.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}
    add_inputs = model.ir_version < 4
    input_names = {i.name for i in graph.input}
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        tensor: onnx.TensorProto | None = None
        if node.domain in ("", "ai.onnx") and node.output and node.output[0] not in outputs:
            if node.op_type == "Constant" and len(node.output) == 1:
                tensor = _constant_tensor(node)
            elif (
                node.op_type == "Identity"
                and len(node.input) == 1
                and node.input[0] in inits
                and node.input[0] not in input_names
            ):
                tensor = onnx.TensorProto()
                tensor.CopyFrom(inits[node.input[0]])
                tensor.name = node.output[0]
        if tensor is None:
            keep.append(node)
            continue
        graph.initializer.append(tensor)
        inits[tensor.name] = graph.initializer[-1]
        if add_inputs:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Best-effort ONNX shape inference; returns the input model when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is optional
        return model


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto | None:
    """``onnx.version_converter`` to ``target`` (default domain); ``None`` when it fails.

    Node and value names are kept by the converter; the caller decides whether to use
    the result (it is only needed when onnx2torch and glam cannot convert the original).
    """
    if model_opset(model) == target:
        return None
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError/...
        return None
    if model_opset(converted) != target or len(converted.graph.node) == 0:
        return None
    return converted
