"""The ``glam batch`` driver: a plan's tasks on a Ray cluster, into one resumable archive.

>>> from glam.batch import driver, plan
>>> p = plan.load_plan("zoo.toml")                                    # doctest: +SKIP
>>> summary = driver.run_batch(p, "zoo.h5", driver.BatchOptions())    # doctest: +SKIP
>>> summary.failed                                                    # doctest: +SKIP
0

Without an address the driver starts a local Ray cluster in-process (the machine's CPUs and
GPUs) and shuts it down at the end; with one (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``)
it joins that cluster. It starts one actor (:class:`~glam.batch.worker.BatchWorker`)
per worker slot, each with a CPU share (its torch threads) or a GPU fraction, hands out
the tasks model by model (a worker keeps the models it imported), and adopts each finished
run into the archive as soon as it comes back, so that a killed driver loses only the
tasks in flight. Rerunning the same command skips the complete runs (and adopts finished
runs left in the shards) and retries the failed tasks.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glam.archive.hdf5 import check_archive_target, existing_runs, init_archive
from glam.batch import shards
from glam.batch.plan import Plan, Task, expand_tasks
from glam.batch.worker import BatchWorker, one_line
from glam.errors import GlamError, MissingDependencyError, UserInputError

#: Default GPU share of one GPU worker (four analyses at once per GPU).
DEFAULT_GPU_FRACTION = 0.25


@dataclass
class BatchOptions:
    """How to run a batch (the plan says what to run).

    Attributes
    ----------
    address:
        Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); ``None``: start a
        local cluster in-process and shut it down at the end.
    workers:
        Most workers (default: as many as the cluster's CPUs or GPU fractions allow).
    cpus_per_worker:
        CPUs (= torch threads) of one CPU worker.
    gpu_fraction:
        GPU share of one GPU worker when the cluster has GPUs (``0.25``: four per GPU).
    num_cpus, num_gpus:
        Size of the local cluster (default: the machine's).
    links:
        Archive runs as HDF5 external links to the shards (kept beside the archive)
        instead of copies.
    dashboard:
        Start Ray's dashboard with the local cluster.
    ray_logs:
        Forward the workers' output to this terminal.
    progress:
        Show the progress bar (stderr).
    command_line:
        Recorded in each run and in the session record.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1
    gpu_fraction: float = DEFAULT_GPU_FRACTION
    num_cpus: int | None = None
    num_gpus: int | None = None
    links: bool = False
    dashboard: bool = False
    ray_logs: bool = False
    progress: bool = False
    command_line: str = ""

    def validate(self) -> None:
        """Reject bad values before the cluster starts.

        Raises
        ------
        UserInputError
        """
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"--workers {self.workers} must be at least 1")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):
            raise UserInputError(
                f"--cpus-per-worker {self.cpus_per_worker!r} must be a number > 0 (default 1)"
            )
        if not (math.isfinite(self.gpu_fraction) and 0 < self.gpu_fraction <= 1):
            raise UserInputError(
                f"--gpu-fraction {self.gpu_fraction!r} must be in (0, 1] (default "
                f"{DEFAULT_GPU_FRACTION}: four workers per GPU)"
            )
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise UserInputError(
                "--num-cpus/--num-gpus size a local cluster; drop them with --address (the "
                "cluster you join has its own resources)"
            )


@dataclass
class BatchSummary:
    """What a batch did (also its ``--json`` summary)."""

    archive: str
    tasks: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    recovered: int = 0
    seconds: float = 0.0
    workers: int = 0
    ray_version: str = ""
    cluster_resources: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """3 when a task failed, else 0."""
        return 3 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "schema_version": 1,
            "archive": self.archive,
            "tasks": self.tasks,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "recovered": self.recovered,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "ray_version": self.ray_version,
            "cluster_resources": self.cluster_resources,
            "failures": self.failures,
            "models": self.models,
        }


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "glam batch needs Ray; install the batch extra: pip install 'glam-sr[batch]'"
        ) from None
    return ray


def _start_ray(ray: Any, options: BatchOptions) -> bool:
    """Join or start the cluster; ``True`` when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": options.ray_logs, "logging_level": logging.ERROR}
    if options.address is not None:
        ray.init(address=options.address, **kw)
        return True  # disconnects at the end (the cluster itself stays up)
    ray.init(num_cpus=options.num_cpus, num_gpus=options.num_gpus,
             include_dashboard=options.dashboard, **kw)
    return True


def _wants_gpu(plan: Plan) -> bool:
    devs = [str({**plan.options, **m.options}.get("device", "auto")) for m in plan.models]
    return any(d == "auto" or d.startswith("cuda") for d in devs)


def worker_slots(resources: dict[str, float], plan: Plan, options: BatchOptions,
                 n_tasks: int) -> tuple[int, float, float]:
    """``(workers, cpus, gpus)`` per worker for the cluster's ``resources``.

    GPU workers (when the cluster has GPUs and a model may use CUDA) take
    ``gpu_fraction`` of a GPU and an equal share of the CPUs (at most
    ``cpus_per_worker``); CPU workers take ``cpus_per_worker`` CPUs each.

    Raises
    ------
    UserInputError
        When the cluster cannot hold one worker.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    if gpus > 0 and _wants_gpu(plan):
        n = max(1, int(math.floor(gpus / options.gpu_fraction + 1e-9)))
        per_cpu = min(float(options.cpus_per_worker), cpus / n) if cpus > 0 else 0.0
        per_gpu = options.gpu_fraction
    else:
        n = int(math.floor(cpus / options.cpus_per_worker + 1e-9))
        per_cpu, per_gpu = float(options.cpus_per_worker), 0.0
        if n < 1:
            raise UserInputError(
                f"the Ray cluster has {cpus:g} CPUs, fewer than --cpus-per-worker "
                f"{options.cpus_per_worker:g}; lower it or add nodes"
            )
    if options.workers is not None:
        n = min(n, options.workers)
    return max(1, min(n, n_tasks)), per_cpu, per_gpu


class _Scheduler:
    """Hands tasks to idle workers model by model (a worker keeps its imported models)."""

    def __init__(self, tasks: list[Task]) -> None:
        self.queues: dict[int, deque[Task]] = {}
        for t in tasks:
            self.queues.setdefault(t.model, deque()).append(t)
        self.on: dict[int, int] = {}  # worker -> model it holds

    def __bool__(self) -> bool:
        return any(self.queues.values())

    def next(self, worker: int) -> Task | None:
        m = self.on.get(worker)
        if m is None or not self.queues.get(m):
            left = [k for k, q in self.queues.items() if q]
            if not left:
                return None
            load = {k: sum(1 for v in self.on.values() if v == k) for k in left}
            m = max(left, key=lambda k: (len(self.queues[k]) / (1 + load[k]), -k))
            self.on[worker] = m
        return self.queues[m].popleft()


def run_batch(
    plan: Plan,
    archive: str | Path,
    options: BatchOptions | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    on_task: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Run every task of ``plan`` that is not complete in ``archive`` on a Ray cluster.

    Parameters
    ----------
    plan:
        What to run (:func:`glam.batch.plan.load_plan`).
    archive:
        The batch archive (created if missing; its shards go to ``<archive>.shards/``).
    options:
        How to run it.
    echo:
        Receives the per-model lines (``None``: silent).
    on_task:
        Called with each task's record once it is archived.

    Returns
    -------
    BatchSummary

    Raises
    ------
    UserInputError
        For a bad plan, archive path or option (before the cluster starts).
    """
    options = options or BatchOptions()
    options.validate()
    ray = _import_ray()  # a missing extra fails before anything is written
    t_start = time.perf_counter()
    started = shards.now()
    tasks = expand_tasks(plan)
    archive = Path(archive)
    check_archive_target(archive)
    from glam.archive.hdf5 import validate_run_name

    for t in tasks:
        validate_run_name(t.run)
    init_archive(archive)
    sdir = shards.shard_dir_for(archive)
    sdir.mkdir(exist_ok=True)
    have = set(existing_runs(archive))
    pending = [t for t in tasks if t.run not in have]
    summary = BatchSummary(archive=str(archive), tasks=len(tasks),
                           skipped=len(tasks) - len(pending))
    by_run = {t.run: t for t in tasks}
    for i, m in enumerate(plan.models):
        summary.models[m.name or m.path] = {"path": m.path, "tasks": 0, "done": 0, "failed": 0,
                                            "skipped": 0, "seconds": 0.0}
        for t in tasks:
            if t.model == i:
                summary.models[m.name or m.path]["tasks"] += 1
                if t.run in have:
                    summary.models[m.name or m.path]["skipped"] += 1
    session = shards.next_session(archive)
    plan_attrs = {"plan": plan.to_json(), "plan_source": plan.source}

    def base_record(t: Task) -> dict[str, Any]:
        return {"run": t.run, "model": plan.models[t.model].path, "image": t.image,
                "roi": list(t.roi) if t.roi else (list(t.grid) if t.grid else None),
                "session": session}

    # finished runs of an interrupted batch, still in the shards only
    rec = shards.recoverable(sdir, [t.run for t in pending])
    if rec:
        shards.record(archive, rec,
                      [{**base_record(by_run[r]), "status": "done", "error": "",
                        "recovered": True, "shard": str(sh)} for sh, r in rec],
                      link=options.links, plan=plan_attrs)
        got = {r for _, r in rec}
        pending = [t for t in pending if t.run not in got]
        summary.recovered = len(got)
        for r in got:
            summary.models[_model_key(plan, by_run[r])]["done"] += 1

    ray_started = False
    actors: list[Any] = []
    try:
        if pending:
            ray_started = _start_ray(ray, options)
            summary.ray_version = str(ray.__version__)
            summary.cluster_resources = {k: float(v) for k, v in ray.cluster_resources().items()
                                         if not k.startswith("node:")}
            n, per_cpu, per_gpu = worker_slots(summary.cluster_resources, plan, options,
                                               len(pending))
            summary.workers = n
            _run_tasks(ray, plan, pending, archive, sdir, options, summary, n, per_cpu, per_gpu,
                       actors, base_record, plan_attrs, echo, on_task)
    finally:
        for a in actors:
            with suppress(Exception):
                ray.kill(a)
        if ray_started:
            with suppress(Exception):
                ray.shutdown()
        summary.seconds = time.perf_counter() - t_start
        _clean_scratch(sdir)
        with suppress(Exception):
            shards.record(archive, [], [], link=options.links, plan=plan_attrs, session=(
                session,
                {"started": started, "finished": shards.now(), "seconds": summary.seconds,
                 "ray_version": summary.ray_version, "address": options.address or "local",
                 "cluster_resources": summary.cluster_resources, "workers": summary.workers,
                 "links": options.links, "command_line": options.command_line,
                 "tasks": summary.tasks, "done": summary.done, "failed": summary.failed,
                 "skipped": summary.skipped, "recovered": summary.recovered},
            ))
    if not options.links:
        shards.remove_adopted(sdir, archive)
    return summary


def _model_key(plan: Plan, t: Task) -> str:
    m = plan.models[t.model]
    return m.name or m.path


def _clean_scratch(sdir: Path) -> None:
    """Scratch / new-shard files of workers that are gone (the actors were killed)."""
    for f in list(sdir.glob(".shard-*")):
        with suppress(OSError):
            f.unlink()


def _run_tasks(
    ray: Any,
    plan: Plan,
    pending: list[Task],
    archive: Path,
    sdir: Path,
    options: BatchOptions,
    summary: BatchSummary,
    n: int,
    per_cpu: float,
    per_gpu: float,
    actors: list[Any],
    base_record: Callable[[Task], dict[str, Any]],
    plan_attrs: dict[str, Any],
    echo: Callable[[str], None] | None,
    on_task: Callable[[dict[str, Any]], None] | None,
) -> None:
    from tqdm.auto import tqdm

    remote = ray.remote(BatchWorker).options(num_cpus=per_cpu, num_gpus=per_gpu,
                                             max_restarts=0)
    threads = max(1, int(per_cpu))

    def spawn() -> Any:
        return remote.remote(plan, str(sdir), threads=threads,
                             command_line=options.command_line)

    actors.extend(spawn() for _ in range(n))
    sched = _Scheduler(pending)
    left = {k: v["tasks"] - v["skipped"] - v["done"] for k, v in summary.models.items()}
    inflight: dict[Any, tuple[int, Task]] = {}
    idle = list(range(n))
    bar = tqdm(total=len(pending), desc="glam batch", unit="task", file=sys.stderr,
               disable=not options.progress, dynamic_ncols=True)
    try:
        while inflight or sched:
            while idle and sched:
                w = idle.pop(0)
                t = sched.next(w)
                if t is None:
                    break
                inflight[actors[w].run.remote(t)] = (w, t)
            bar.set_postfix_str(f"done {summary.done} failed {summary.failed} running "
                                f"{len(inflight)}")
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                w, t = inflight.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    res = {"run": t.run, "status": "failed", "seconds": 0.0,
                           "error": f"worker died: {one_line(exc)[:300]}"}
                    actors[w] = spawn()  # its models and shard go with it
                    sched.on.pop(w, None)
                except ray.exceptions.RayError as exc:
                    res = {"run": t.run, "status": "failed", "seconds": 0.0,
                           "error": one_line(exc)[:500]}
                idle.append(w)
                rec = {**base_record(t), **{k: v for k, v in res.items() if k != "metrics"}}
                adopt = [(Path(res["shard"]), t.run)] if res["status"] == "done" else []
                try:
                    shards.record(archive, adopt, [rec], link=options.links, plan=plan_attrs)
                except (GlamError, OSError) as exc:  # e.g. the shard is unreadable
                    if not adopt:
                        raise
                    res = {**res, "status": "failed", "error": f"adopting the run failed: "
                           f"{one_line(exc)}"}
                    rec = {**rec, "status": res["status"], "error": res["error"]}
                    shards.record(archive, [], [rec], link=options.links, plan=plan_attrs)
                mk = _model_key(plan, t)
                stats = summary.models[mk]
                stats["seconds"] += float(res.get("seconds", 0.0))
                if res["status"] == "done":
                    summary.done += 1
                    stats["done"] += 1
                else:
                    summary.failed += 1
                    stats["failed"] += 1
                    summary.failures.append({"run": t.run, "model": plan.models[t.model].path,
                                             "image": t.image, "error": str(res["error"])})
                left[mk] -= 1
                if left[mk] == 0 and echo is not None:
                    echo(_model_line(mk, stats, summary.failures))
                bar.update(1)
                if on_task is not None:
                    on_task(rec)
    finally:
        bar.close()


def _model_line(key: str, stats: dict[str, Any], failures: list[dict[str, str]]) -> str:
    ran = stats["done"] + stats["failed"]
    per = stats["seconds"] / ran if ran else 0.0
    line = (f"{Path(key).name}: {stats['done']}/{stats['tasks'] - stats['skipped']} done, "
            f"{stats['failed']} failed, {per:.2f} s/task")
    errs = [f["error"] for f in failures if f["model"] == stats["path"]]
    if errs:
        line += f" (first error: {errs[0]})"
    return line
