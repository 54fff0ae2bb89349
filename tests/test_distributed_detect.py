"""Multi-process detection: single-process machines must not call jax.distributed.initialize()."""
import pytest
from jax._src import clusters

from anchoredit_jax import distributed


# Plain classes, not ClusterEnv subclasses: subclassing registers them in jax's global detector list
# for every later test in the session.
class _OptInOnly:
    """Like Mpi4pyCluster on a machine where mpi4py is merely installed."""
    opt_in_only_method = True

    @classmethod
    def is_env_present(cls) -> bool:
        return True


class _Present:
    @classmethod
    def is_env_present(cls) -> bool:
        return True


@pytest.fixture
def only(monkeypatch):
    assert not {_OptInOnly, _Present} & set(clusters.ClusterEnv._cluster_types)

    def set_types(*types):
        monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", list(types))
    monkeypatch.delenv("ANCHOREDIT_DISTRIBUTED", raising=False)
    for var in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return set_types


def test_opt_in_only_detector_is_not_a_cluster(only):
    only(_OptInOnly)
    assert not distributed._cluster_detected()
    assert distributed.maybe_initialize() is False  # would raise "coordinator_address should be defined"


def test_present_detector_is_a_cluster_unless_opted_out(only, monkeypatch):
    only(_Present)
    assert distributed._cluster_detected()
    monkeypatch.setenv("ANCHOREDIT_DISTRIBUTED", "0")
    assert not distributed._cluster_detected()
    only(_OptInOnly)
    monkeypatch.setenv("ANCHOREDIT_DISTRIBUTED", "1")
    assert distributed._cluster_detected()
