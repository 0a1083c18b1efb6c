"""What this process may use of the machine: CPUs (affinity, cgroup quota, other processes'
load) and memory (cgroup limit, ``MemAvailable``, ``ulimit -v``), read from Linux's ``/proc`` and
``/sys/fs/cgroup`` (issue 23). Standard library only; every reader returns ``None`` where
the information does not exist (another OS, no cgroup limit), never raises.

>>> cpus = cpu_budget(sample_seconds=0.05)
>>> 1 <= cpus.free <= cpus.available <= cpus.affinity
True
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuBudget", "MemoryBudget", "cgroup_dirs", "cpu_budget", "memory_budget"]

#: A CPU counts as free when other processes used at most this much of it while sampled.
BUSY_SLACK = 0.2
#: How long :func:`cpu_budget` samples ``/proc/stat`` (seconds; glam sleeps meanwhile):
#: 10 clock ticks per CPU, enough to tell a busy core from an idle one.
SAMPLE_SECONDS = 0.1

_PROC = Path("/proc")
_CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def cgroup_dirs(proc: Path = _PROC, root: Path = _CGROUP) -> list[Path]:
    """This process's cgroup directories, innermost first, then every ancestor up to the
    root (limits can sit on any of them): cgroup v2's unified folder, or v1's ``cpu`` and
    ``memory`` controller folders."""
    text = _read(proc / "self" / "cgroup")
    if text is None:
        return []
    out: list[Path] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        unified = root / "unified" if (root / "unified").is_dir() else root  # v1+v2 hybrid
        bases = [unified] if controllers == "" else [
            root / c for c in (controllers, *controllers.split(",")) if c
        ]
        for base in bases:
            d = base / rel.lstrip("/")
            while True:
                if d.is_dir() and d not in out:
                    out.append(d)
                if d == base or base not in d.parents:
                    break
                d = d.parent
    return out


def _cpu_quota(dirs: list[Path]) -> float | None:
    """The tightest CPU quota in CPUs (``cpu.max`` or ``cpu.cfs_quota_us``), or ``None``."""
    best: float | None = None
    for d in dirs:
        q: float | None = None
        text = _read(d / "cpu.max")
        if text is not None:
            parts = text.split()
            if len(parts) == 2 and parts[0] != "max":
                q = int(parts[0]) / max(1, int(parts[1]))
        else:
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota is not None and period is not None and int(quota) > 0:
                q = int(quota) / max(1, int(period))
        if q is not None and q > 0:
            best = q if best is None else min(best, q)
    return best


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cpu_times(proc: Path, cpus: set[int]) -> tuple[float, float] | None:
    """``(busy, total)`` jiffies summed over ``cpus`` from ``/proc/stat``."""
    text = _read(proc / "stat")
    if text is None:
        return None
    busy = total = 0.0
    seen = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        try:
            n = int(name[3:])
        except ValueError:
            continue
        if n not in cpus or len(fields) < 5:
            continue
        vals = [float(v) for v in fields[:8]]
        idle = vals[3] + vals[4]  # idle + iowait
        total += sum(vals)
        busy += sum(vals) - idle
        seen += 1
    return (busy, total) if seen else None


def _own_ticks(proc: Path) -> float:
    """CPU time of this process, every thread, in clock ticks (``/proc/self/stat``)."""
    text = _read(proc / "self" / "stat") or ""
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return float(fields[11]) + float(fields[12])  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return 0.0


def busy_cpus(cpus: set[int], seconds: float = SAMPLE_SECONDS, proc: Path = _PROC) -> float | None:
    """How many of ``cpus`` other processes keep busy: ``/proc/stat`` sampled over
    ``seconds`` while this process sleeps, less what this process's own threads used
    meanwhile (a thread pool still spinning after earlier work), ``None`` where there is no
    ``/proc/stat``."""
    a, own_a = _cpu_times(proc, cpus), _own_ticks(proc)
    if a is None:
        return None
    time.sleep(seconds)
    b, own_b = _cpu_times(proc, cpus), _own_ticks(proc)
    if b is None or b[1] <= a[1]:
        return None
    others = max(0.0, (b[0] - a[0]) - (own_b - own_a))
    return len(cpus) * others / (b[1] - a[1])


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use, and how many of them are free now.

    Attributes
    ----------
    affinity:
        CPUs the process may run on (``os.sched_getaffinity``: ``taskset``, a container's
        cpuset).
    quota:
        The cgroup CPU quota in CPUs (``docker --cpus``), ``None`` without one.
    busy:
        CPUs of the affinity set that other processes kept busy while sampled, ``None``
        when not measurable.
    load:
        The 1-minute load average (machine-wide), ``None`` when unknown.
    """

    affinity: int
    quota: float | None = None
    busy: float | None = None
    load: float | None = None

    @property
    def available(self) -> int:
        """CPUs granted: the affinity set, capped by the quota (at least 1)."""
        n = self.affinity
        if self.quota is not None:
            n = min(n, max(1, math.floor(self.quota + 1e-9)))
        return max(1, n)

    @property
    def free(self) -> int:
        """Granted CPUs that other processes leave free (at least 1): a CPU counts as free
        when they used at most :data:`BUSY_SLACK` of it while sampled."""
        if self.busy is None:
            return self.available
        return max(1, min(self.available, math.floor(self.available - self.busy + BUSY_SLACK)))

    def describe(self) -> str:
        """``2 CPU(s) available, 1.0 busy with other processes`` (for the phase log)."""
        parts = [f"{self.available} CPU(s) available"]
        if self.quota is not None and self.available < self.affinity:
            parts[0] += f" (cgroup quota {self.quota:g} of {self.affinity})"
        if self.busy is not None:
            parts.append(f"{self.busy:.1f} busy with other processes")
        if self.load is not None:
            parts.append(f"load average {self.load:.1f}")
        return ", ".join(parts)


def cpu_budget(*, sample_seconds: float = SAMPLE_SECONDS, proc: Path = _PROC,
               root: Path = _CGROUP) -> CpuBudget:
    """Measure :class:`CpuBudget` now (sleeps ``sample_seconds`` to sample ``/proc/stat``;
    0 skips the sample)."""
    cpus = _affinity()
    affinity = len(cpus) if cpus else max(1, os.cpu_count() or 1)
    quota = _cpu_quota(cgroup_dirs(proc, root))
    busy = busy_cpus(cpus, sample_seconds, proc) if cpus and sample_seconds > 0 else None
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return CpuBudget(affinity, quota, busy, load)


@dataclass(frozen=True)
class MemoryBudget:
    """Memory this process may still take, in bytes (``None``: unknown).

    Attributes
    ----------
    mem_available:
        ``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate of what can be
        allocated without swapping).
    cgroup_free:
        The tightest cgroup memory limit minus the cgroup's current use.
    cgroup_limit:
        That limit.
    address_space_free:
        ``ulimit -v`` (``RLIMIT_AS``) minus the process's current virtual size.
    """

    mem_available: int | None = None
    cgroup_free: int | None = None
    cgroup_limit: int | None = None
    address_space_free: int | None = None

    @property
    def available(self) -> int | None:
        """The smallest of the three, or ``None`` when none is known."""
        vals = [v for v in (self.mem_available, self.cgroup_free, self.address_space_free)
                if v is not None]
        return min(vals) if vals else None

    def describe(self) -> str:
        """Which figure limits, e.g. ``3.2 GiB (cgroup limit 4.0 GiB)``."""
        avail = self.available
        if avail is None:
            return "unknown"
        text = _size(avail)
        if self.address_space_free is not None and avail == self.address_space_free:
            text += " (ulimit -v)"
        elif self.cgroup_free is not None and avail == self.cgroup_free:
            text += f" (cgroup limit {_size(self.cgroup_limit or 0)})"
        else:
            text += " (MemAvailable)"
        return text


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 0.1 * 2**30 else f"{n / 2**20:.0f} MiB"


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def memory_budget(proc: Path = _PROC, root: Path = _CGROUP) -> MemoryBudget:
    """Read :class:`MemoryBudget` now."""
    avail = None
    text = _read(proc / "meminfo")
    if text is not None:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    free = limit = None
    for d in cgroup_dirs(proc, root):
        lim = _int(_read(d / "memory.max"))
        used = _int(_read(d / "memory.current"))
        if lim is None:
            lim = _int(_read(d / "memory.limit_in_bytes"))
            used = _int(_read(d / "memory.usage_in_bytes"))
            if lim is not None and lim >= 2**60:  # v1 writes "no limit" as a huge number
                lim = None
        if lim is None:
            continue
        f = max(0, lim - (used or 0))
        if free is None or f < free:
            free, limit = f, lim
    return MemoryBudget(avail, free, limit, _address_space_free(proc))


def _address_space_free(proc: Path) -> int | None:
    """``RLIMIT_AS`` (``ulimit -v``) minus ``VmSize``, ``None`` without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    text = _read(proc / "self" / "status") or ""
    for line in text.splitlines():
        if line.startswith("VmSize:"):
            return max(0, soft - int(line.split()[1]) * 1024)
    return None
