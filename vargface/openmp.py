"""OpenMP settings for MXNet, made before it starts (it reads them once, at import): docs/environment.md#cpu-threads.

- OMP_NUM_THREADS: the usable cores (without it MXNet used one core on CPU).
- OMP_WAIT_POLICY=ACTIVE when everything runs on one CPU device in one process: between MXNet's many short
  parallel regions the OpenMP threads otherwise go to sleep, and waking them halved CPU training speed beside the
  data loader's threads. Not on GPUs or in distributed runs, where spinning threads would take the cores from data
  loading or from the other processes, and not on several CPU devices (``--ctx cpu:0,cpu:1``), whose engine
  threads run operators at once: each device's spinning threads took the cores from the other's.
- MXNET_SUBGRAPH_VERBOSE=0: MXNet otherwise logs "Subgraph backend MKLDNN is activated" at every bind.

Engine worker threads (MXNET_CPU_WORKER_NTHREADS) stay at 1: more made oneDNN fail intermittently on CPU. A value
the user set is kept."""
import math
import os

# A container's CPU limit: cgroup v2, then v1 (quota and period in microseconds; no quota: "max" or -1).
CGROUP_QUOTAS = (("/sys/fs/cgroup/cpu.max", None),
                 ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def _cgroup_limit():
    """Cores a container's CPU quota allows (rounded up), or None when there is no quota."""
    for quota_path, period_path in CGROUP_QUOTAS:
        try:
            with open(quota_path) as f:
                fields = f.read().split()
            if period_path:
                with open(period_path) as f:
                    fields = fields[:1] + f.read().split()[:1]
            quota, period = float(fields[0]), float(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # "max", absent files, another layout
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    return None


def usable_cores():
    """The cores this process may run on: its CPU affinity (taskset, a batch scheduler's cpuset) within a
    container's CPU quota, not the machine's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _cgroup_limit()
    return min(cores, limit) if limit else cores


def configure(one_cpu_device):
    """Set the defaults above (``one_cpu_device``: one CPU device in one process, nothing else); returns the
    names it set."""
    wanted = {"OMP_NUM_THREADS": str(usable_cores()), "MXNET_SUBGRAPH_VERBOSE": "0"}
    if one_cpu_device:
        wanted["OMP_WAIT_POLICY"] = "ACTIVE"
    chosen = [name for name in wanted if name not in os.environ]
    for name in chosen:
        os.environ[name] = wanted[name]
    return chosen
