"""glam's own registry of ONNX → torch converters, keyed by ``(domain, op_type, opset)``.

onnx2torch 1.5.15 stops at about opset 17 and converts a few ops wrongly (see the import
study, §2). The converters in :mod:`glam.importers.onnx.converters` fill those gaps. They are
registered here with :func:`register` and installed into onnx2torch's own registry only for
the duration of a conversion (:func:`glam.importers.onnx.converters.patched_onnx2torch`), so
onnx2torch itself is never forked, vendored or permanently modified.

Keys use the *schema* version (``since_version``) of the operator, as onnx2torch does: a
model at opset 20 that uses ``Pad`` is served by the converter registered for ``Pad``-19,
the newest ``Pad`` schema not newer than 20.

>>> from glam.importers.onnx.registry import register
>>> @register("MyOp", 1, domain="com.example")     # doctest: +SKIP
... def _(node, graph): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from glam.errors import UnsupportedOpsError
from onnx import defs

#: ``converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult`` (onnx2torch API).
Converter = Callable[[Any, Any], Any]
#: ``check(node: onnx.NodeProto) -> reason | None``: why this converter refuses a node.
Check = Callable[[onnx.NodeProto], "str | None"]

ONNX_DOMAIN = ""


@dataclass(frozen=True)
class ConverterEntry:
    """One registered converter.

    Attributes
    ----------
    domain, op_type, version:
        The key: operator domain (``""`` for ``ai.onnx``), type and schema version.
    converter:
        onnx2torch-style converter ``(OnnxNode, OnnxGraph) -> OperationConverterResult``.
    check:
        Optional ``(NodeProto) -> str | None`` giving the reason this converter refuses a
        node (an attribute value it cannot reproduce exactly), or ``None`` when it accepts it.
    """

    domain: str
    op_type: str
    version: int
    converter: Converter
    check: Check | None = None

    @property
    def label(self) -> str:
        """``op-version`` with the domain prefixed when it is not ``ai.onnx``."""
        return f"{qualified_op(self.domain, self.op_type)}-{self.version}"


_REGISTRY: dict[tuple[str, str, int], ConverterEntry] = {}


def qualified_op(domain: str, op_type: str) -> str:
    """``op_type`` for the default domain, ``domain.op_type`` otherwise."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def register(
    op_type: str,
    *opsets: int,
    domain: str = ONNX_DOMAIN,
    check: Check | None = None,
) -> Callable[[Converter], Converter]:
    """Decorator registering a converter for ``op_type`` at every schema version in ``opsets``.

    Parameters
    ----------
    op_type:
        ONNX operator type, e.g. ``"Resize"``.
    *opsets:
        Schema versions (``since_version``) the converter handles, e.g. ``18, 19``.
    domain:
        Operator domain, ``""`` for the default ``ai.onnx`` domain.
    check:
        Optional ``(NodeProto) -> str | None`` returning why a node cannot be converted
        exactly (checked for every node before any conversion starts).

    Returns
    -------
    Callable
        The decorator; it returns the converter unchanged.

    Raises
    ------
    ValueError
        When no opset is given or a key is already registered.
    """
    if not opsets:
        raise ValueError(f"register({op_type!r}) needs at least one opset version")
    domain = "" if domain == "ai.onnx" else domain

    def deco(converter: Converter) -> Converter:
        for version in opsets:
            key = (domain, op_type, int(version))
            if key in _REGISTRY:
                raise ValueError(
                    f"a converter for {qualified_op(domain, op_type)}-{version} is already "
                    "registered; each (op, opset) key may be registered once"
                )
            _REGISTRY[key] = ConverterEntry(domain, op_type, int(version), converter, check)
        return converter

    return deco


def schema_version(op_type: str, opset: int, domain: str = ONNX_DOMAIN) -> int | None:
    """The ``since_version`` of the newest schema of ``op_type`` not newer than ``opset``.

    Returns ``None`` when onnx knows no such schema (unknown or custom-domain operator).
    """
    try:
        return int(
            defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
        )
    except (defs.SchemaError, RuntimeError):
        return None


def find(op_type: str, opset: int, domain: str = ONNX_DOMAIN) -> ConverterEntry | None:
    """The entry serving ``op_type`` in a model at ``opset``, or ``None``."""
    domain = "" if domain == "ai.onnx" else domain
    version = schema_version(op_type, opset, domain)
    if version is None:
        version = opset
    return _REGISTRY.get((domain, op_type, version))


def lookup(op_type: str, opset: int, domain: str = ONNX_DOMAIN) -> ConverterEntry:
    """Like :func:`find`, but raise a typed error listing what is registered.

    Raises
    ------
    UnsupportedOpsError
        When no converter serves ``op_type`` at ``opset``.
    """
    entry = find(op_type, opset, domain)
    if entry is not None:
        return entry
    domain = "" if domain == "ai.onnx" else domain
    version = schema_version(op_type, opset, domain) or opset
    same = sorted(v for (d, o, v) in _REGISTRY if d == domain and o == op_type)
    if same:
        detail = f"glam registers {qualified_op(domain, op_type)} for opsets " + ", ".join(
            map(str, same)
        )
    else:
        ops = sorted({qualified_op(d, o) for (d, o, _) in _REGISTRY})
        detail = "glam registers converters for: " + ", ".join(ops)
    raise UnsupportedOpsError([(qualified_op(domain, op_type), version)], detail)


def entries() -> Iterator[ConverterEntry]:
    """Every registered entry, sorted by key."""
    for key in sorted(_REGISTRY):
        yield _REGISTRY[key]


def registered_keys() -> list[tuple[str, str, int]]:
    """Every registered ``(domain, op_type, version)`` key, sorted."""
    return sorted(_REGISTRY)
