"""Device selection: ``auto`` picks CUDA when present, else CPU."""

from __future__ import annotations

import torch

from analyzer.errors import UserInputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    Raises
    ------
    UserInputError
        For an unknown device string or a CUDA device that is not available.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = (device or "auto").strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise UserInputError(
                f"device {device!r} is not understood; use auto, cpu, cuda or cuda:N"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(
                f"device {str(dev)!r} was asked for but CUDA is not available; use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {str(dev)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise UserInputError(f"device {str(dev)!r} is not supported; use auto, cpu or cuda[:N]")
    return dev
