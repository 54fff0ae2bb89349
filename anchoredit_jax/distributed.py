"""Multi-process start-up on existing cluster machinery (jax.distributed; nothing home-made).

`jax.distributed.initialize()` auto-detects TPU pods, SLURM and Open MPI; explicit coordinator
settings (config or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment
variables) cover everything else, e.g. two processes on one machine in tests.
"""
from __future__ import annotations

import os

import jax
from absl import logging


def _cluster_detected() -> bool:
    flag = os.environ.get("ANCHOREDIT_DISTRIBUTED")
    if flag in ("0", "1"):  # explicit opt-in (launch/tpu_pod.sh sets it) or opt-out
        return flag == "1"
    try:  # jax's own detectors (Cloud TPU VMs read their worker list from the metadata server)
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            # Opt-in-only detectors (Mpi4pyCluster: "mpi4py is importable") say nothing about this job,
            # and jax.distributed.initialize() without arguments would not use them either.
            if getattr(env, "opt_in_only_method", False):
                continue
            if env.__name__ not in ("SlurmCluster", "OmpiCluster") and env.is_env_present():
                return True
    except Exception:  # noqa: BLE001  (private API; fall back to the environment checks below)
        pass
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def maybe_initialize(cfg=None) -> bool:
    """Initialises jax.distributed when a multi-process job is detected; returns whether it did."""
    cfg = cfg or {}
    addr = cfg.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if addr:
        num = int(cfg.get("num_processes") or os.environ["JAX_NUM_PROCESSES"])
        pid = int(cfg.get("process_id") if cfg.get("process_id") is not None else os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=addr, num_processes=num, process_id=pid)
    elif _cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
