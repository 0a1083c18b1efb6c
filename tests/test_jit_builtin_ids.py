"""torch's TorchScript builtin table is keyed by ``id()``; operator objects torch retires must
stay alive so that no new object is ever taken for a builtin (``glam.importers.torchscript.jit_builtin_ids``).

CI hit this as a flaky ``torch.jit.script`` failure ("builtin cannot be used as a value" on
``Conv2d._reversed_padding_repeated_twice``) after ``torch.export`` had imported a module
that adds overloads to existing ops.
"""

from __future__ import annotations

import gc
import itertools

import glam.importers  # noqa: F401  (installs the guard, as every glam import route does)
import torch
from torch import nn
from torch.jit._builtins import _get_builtin_table

_NAMES = (f"glam_ids_test{i}" for i in itertools.count())


def _alive(object_id: int) -> bool:
    gc.collect()
    return any(id(o) == object_id for o in gc.get_objects())


def test_an_overload_added_to_a_touched_op_keeps_the_old_operator_alive() -> None:
    lib = torch.library.Library(next(_NAMES), "DEF")
    lib.define("f(Tensor x) -> Tensor")
    old = id(getattr(torch.ops, lib.ns).f._op)  # touching the packet registers its operator
    assert _get_builtin_table().get(old) == f"{lib.ns}::f"
    lib.define("f.two(Tensor x, Tensor y) -> Tensor")  # torch replaces the packet's operator
    assert id(getattr(torch.ops, lib.ns).f._op) != old
    assert _get_builtin_table().get(old) == f"{lib.ns}::f", "torch removed the entry itself"
    assert _alive(old), "the retired operator was freed while its id stays a builtin"


def test_a_destroyed_library_keeps_its_operators_alive() -> None:
    lib = torch.library.Library(next(_NAMES), "DEF")
    lib.define("g(Tensor x) -> Tensor")
    ns = lib.ns
    old = id(getattr(torch.ops, ns).g._op)
    lib._destroy()
    assert "g" not in vars(getattr(torch.ops, ns))
    assert _alive(old)


def test_script_after_many_retired_operators() -> None:
    """The failing case from CI, made likely: many freed operators, then fresh tuples of
    the size the reflect-padded conv stores."""
    lib = torch.library.Library(next(_NAMES), "DEF")
    for i in range(64):
        lib.define(f"h{i}(Tensor x) -> Tensor")
        getattr(getattr(torch.ops, lib.ns), f"h{i}")
        lib.define(f"h{i}.two(Tensor x, Tensor y) -> Tensor")
    gc.collect()
    table = _get_builtin_table()
    keep = []
    for n in range(20000):
        for obj in ((n, n + 1, n + 2, n + 3), keep.append):
            assert id(obj) not in table, obj
            keep.append(obj)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(torch.jit.script(net)(x), net(x))
