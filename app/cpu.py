"""How many physical cores this process may use: the default thread count for llama.cpp and torch.

llama.cpp runs fastest with one thread per physical core; hyper-threads and cores outside the
process's affinity mask or cgroup quota only add contention.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def physical_cores() -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = {_core_of(cpu) for cpu in cpus}
    count = len(cores) if None not in cores else len(cpus)
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota) if quota else count)


def _core_of(cpu: int) -> tuple[str, str] | None:
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return (topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()
    except OSError:
        return None


def _cgroup_cpu_quota() -> int | None:
    """cgroup v2 `cpu.max` ("max 100000" or "200000 100000") as whole CPUs, rounded up."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else math.ceil(int(quota) / int(period))
