"""Keep the operator objects torch retires alive, so TorchScript never mistakes a new object
for one of them.

``torch.jit`` recognises a Python value as a TorchScript builtin by its ``id()``
(``torch.jit._builtins._builtin_table``). Each ``torch.ops.<ns>.<op>`` packet registers its
operator object there when first touched, and torch never removes the entry. Two torch
paths then free that object while its id stays registered:

* ``torch.library`` adding an overload to an op whose packet exists replaces the packet's
  operator (``torch._ops._refresh_packet``). Importing ``torch.ao.quantization.fx._decomposed``
  does it for ``quantized_decomposed::quantize_per_tensor``, and ``torch.export``, which
  glam's import routes use, imports that module;
* a ``torch.library.Library`` being destroyed deletes its packets
  (``torch.library._clear_torch_ops_cache``).

CPython reuses the freed address. An object allocated there later, for instance the padding
tuple of a ``Conv2d`` with ``padding_mode="reflect"``, is then taken for a builtin, and
``torch.jit.script`` fails with "builtin cannot be used as a value". Whether it happens
depends on the memory layout, so it shows up on some machines only (CI did). glam runs
``torch.export`` and ``torch.jit`` in one process, many models per process in a batch
worker, so :func:`keep_retired_ops_alive` keeps a reference to every retired operator
object: a few hundred bytes each, and an id that is never handed out again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_RETIRED: list[object] = []
_installed = False


def keep_retired_ops_alive() -> None:
    """Wrap torch's two retiring paths so that they keep the old operator objects referenced.

    Idempotent. A torch without these private functions (another version) is left as it is.
    """
    global _installed
    if _installed:
        return
    import torch
    import torch._ops as torch_ops
    import torch.library as torch_library

    refresh: Callable[..., Any] | None = getattr(torch_ops, "_refresh_packet", None)
    clear: Callable[..., Any] | None = getattr(torch_library, "_clear_torch_ops_cache", None)
    if refresh is None or clear is None:
        _installed = True
        return

    def _refresh_packet(packet: Any, *args: Any, **kwargs: Any) -> Any:
        _RETIRED.append(getattr(packet, "_op", None))
        return refresh(packet, *args, **kwargs)

    def _clear_torch_ops_cache(op_defs: Any, *args: Any, **kwargs: Any) -> Any:
        for qualname in list(op_defs):
            ns, _, rest = str(qualname).partition("::")
            namespace = vars(torch.ops).get(ns)
            if namespace is not None:
                packet = vars(namespace).get(rest.split(".")[0])
                if packet is not None:
                    _RETIRED.append(packet)
        return clear(op_defs, *args, **kwargs)

    torch_ops._refresh_packet = _refresh_packet
    torch_library._clear_torch_ops_cache = _clear_torch_ops_cache
    _installed = True
