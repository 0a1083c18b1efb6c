"""The batch worker: one per Ray actor, one HDF5 shard per worker.

A :class:`BatchWorker` imports (and parity-checks) each model once, keeps it for the
worker's later tasks of that model, and runs each task through the same function as
``glam analyze`` (:func:`glam.runs.analyze_one`) into its own shard, a glam archive that
no other process writes. A task never raises: a failure comes back as a ``"failed"``
result with its one-line error, so that the batch goes on.

The class is plain Python (the driver wraps it with ``ray.remote``), so it is tested and
usable without Ray.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from glam.batch.plan import ModelSpec, Plan, Task, grid_roi
from glam.errors import GlamError


def one_line(exc: BaseException) -> str:
    """``exc`` as one line (``Type: message`` for errors that are not glam's own)."""
    text = "; ".join(s.strip() for s in str(exc).strip().splitlines() if s.strip())
    if isinstance(exc, GlamError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BatchWorker:
    """Runs tasks of one batch into its own shard.

    Parameters
    ----------
    plan:
        The batch plan (models, options).
    shard_dir:
        Directory of the shards (beside the archive); this worker writes
        ``shard-<token>.h5`` there and nothing else.
    threads:
        Torch threads (the worker's CPU share).
    command_line:
        Recorded in each run's provenance.
    """

    def __init__(self, plan: Plan, shard_dir: str | Path, *, threads: int = 1,
                 command_line: str = "") -> None:
        import torch

        self.plan = plan
        self.threads = max(1, int(threads))
        torch.set_num_threads(self.threads)
        self.shard = Path(shard_dir) / f"shard-{uuid.uuid4().hex[:12]}.h5"
        self.command_line = command_line
        self._models: dict[str, Any] = {}  # ModelSpec.key -> ImportedModel | error line
        self.imports = 0
        self.gpu = self._gpu_device()

    @staticmethod
    def _gpu_device() -> str | None:
        """``"cuda"`` when Ray gave this worker a GPU (it sets CUDA_VISIBLE_DEVICES)."""
        try:
            import ray

            if ray.is_initialized() and ray.get_gpu_ids():
                return "cuda"
        except Exception:  # noqa: BLE001 - outside Ray: no GPU assignment
            return None
        return None

    def info(self) -> dict[str, Any]:
        """Where this worker runs and writes (for the ``batch`` record)."""
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "shard": str(self.shard),
                "threads": self.threads, "gpu": self.gpu}

    def _model(self, spec: ModelSpec) -> Any:
        """The imported model of ``spec`` (imported on first use; an import error is kept
        and re-raised for the model's later tasks, without importing again)."""
        got = self._models.get(spec.key)
        if got is None:
            import glam.importers

            try:
                got = glam.importers.load(spec.path, trust_model=self.plan.trust_model,
                                     **spec.load_kwargs())
                self.imports += 1
            except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
                got = f"import of {spec.path!r} failed: {one_line(exc)}"
            self._models[spec.key] = got
        if isinstance(got, str):
            raise _ImportFailed(got)
        return got

    def run(self, task: Task) -> dict[str, Any]:
        """Run one task into the shard; never raises.

        Returns
        -------
        dict
            ``run``, ``status`` (``"done"`` or ``"failed"``), ``error`` (one line or
            ``""``), ``seconds``, ``shard``, ``pid``, ``metrics`` and ``import_seconds``.
        """
        t0 = time.perf_counter()
        out: dict[str, Any] = {"run": task.run, "shard": str(self.shard), "pid": os.getpid(),
                               "metrics": {}, "error": "", "import_seconds": 0.0}
        try:
            spec = self.plan.models[task.model]
            fresh = spec.key not in self._models
            model = self._model(spec)
            t_import = time.perf_counter() - t0 if fresh else 0.0
            out["import_seconds"] = t_import
            out["metrics"] = self._analyze(model, spec, task)
            out["status"] = "done"
        except _ImportFailed as exc:
            out["status"], out["error"] = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
            out["status"], out["error"] = "failed", one_line(exc)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _analyze(self, model: Any, spec: ModelSpec, task: Task) -> dict[str, float]:
        from glam.runs import (
            analyze_one,
            check_engine_parity,
            check_image_sizes,
            image_size,
        )

        opts = self.plan.analyze_options(spec)
        opts.command_line = self.command_line
        if opts.device == "auto":
            opts.device = self.gpu or "cpu"
        oc = int(model.conventions.out_channels)
        if oc not in (1, 3):
            from glam.errors import ConventionError

            raise ConventionError(
                f"the model's output {model.conventions.output_name!r} has {oc} channels; glam "
                "analyses images (1 channel = Y, 3 = RGB); pick an image output with output = "
                "in the plan"
            )
        check_image_sizes(model, [Path(task.image)], opts)
        if task.grid is not None:
            c = model.conventions
            w, h = image_size(task.image)
            s = int(c.scale)
            if opts.hr:
                w, h = w // s, h // s
            out_hw = (s * h + int(c.offset[0]), s * w + int(c.offset[1]))
            opts.roi = grid_roi(task.grid, out_hw, opts.window)
        else:
            opts.roi = task.roi
        # the reference was paired at plan time, as glam analyze pairs (*_LR/*_HR, reference_dir)
        summary = analyze_one(model, task.image, self.shard, task.run, opts,
                              reference=task.reference)
        try:
            check_engine_parity([summary])
        except GlamError:
            # a run whose --verify failed is not adopted (nor found again on resume)
            from glam.archive.hdf5 import drop_run

            drop_run(self.shard, task.run)
            raise
        return {k: float(v) for k, v in summary.metrics.items()}


class _ImportFailed(Exception):
    """The task's model could not be imported (its one-line message)."""
