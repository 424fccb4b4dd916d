"""OpenMP settings for MXNet, made before it starts (it reads them once, at import): docs/environment.md#cpu-threads.

- OMP_NUM_THREADS: all cores (without it MXNet used one core on CPU).
- OMP_WAIT_POLICY=ACTIVE when everything runs on CPUs in one process: between MXNet's many short parallel regions
  the OpenMP threads otherwise go to sleep, and waking them halved CPU training speed beside the data loader's
  threads. Not on GPUs or in distributed runs, where spinning threads would take the cores from data loading or
  from the other processes.
- MXNET_SUBGRAPH_VERBOSE=0: MXNet otherwise logs "Subgraph backend MKLDNN is activated" at every bind.

Engine worker threads (MXNET_CPU_WORKER_NTHREADS) stay at 1: more made oneDNN fail intermittently on CPU. A value
the user set is kept."""
import os


def configure(cpu_only):
    """Set the defaults above (``cpu_only``: CPUs alone, one process); returns the names it set."""
    wanted = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "MXNET_SUBGRAPH_VERBOSE": "0"}
    if cpu_only:
        wanted["OMP_WAIT_POLICY"] = "ACTIVE"
    chosen = [name for name in wanted if name not in os.environ]
    for name in chosen:
        os.environ[name] = wanted[name]
    return chosen
