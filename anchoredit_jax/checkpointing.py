"""Checkpoints with orbax: train state + grain iterator state, async, last N kept, preemption-safe.

Layout of a workdir:
  checkpoints/<step>/state   params, optimizer state, EMA, step, RNG (orbax, sharded arrays)
  checkpoints/<step>/data    the grain iterator state of every process (exact data resume)
  best/<step>/params         the params with the best validation loss (kept: 1)
A restart finds the latest step and continues; SIGTERM (preemption) sets a flag that the loop
turns into a final synchronous save and a clean exit.
"""
from __future__ import annotations

import logging
import os
import signal

import grain.python as grain
import jax
import orbax.checkpoint as ocp


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO records (several per save and restore, some of kilobytes: they bury a
    run's own log) unless `keep_info`, and its warning that a CheckpointManager item folder
    (`<step>/state`) has no metadata file of its own, printed on every direct restore of one
    although the step folder holds that file and the restore is whole. Other records pass."""

    def __init__(self, keep_info: bool = False):
        super().__init__()
        self.keep_info = keep_info

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname.replace(os.sep, "/"):
            return True
        if record.levelno < logging.WARNING:
            return self.keep_info
        return not str(record.msg).startswith("Metadata file does not exist")


class _QuietNoTpu(logging.Filter):
    """Drops jax's INFO record that no TPU runtime (libtpu) is installed, the first line of every
    CLI's log on a CPU or GPU machine, unless `keep_info`. Other backends' records pass: a GPU that
    fails to start must still say so."""

    def __init__(self, keep_info: bool = False):
        super().__init__()
        self.keep_info = keep_info

    def filter(self, record: logging.LogRecord) -> bool:
        return (self.keep_info or record.levelno >= logging.WARNING
                or not record.getMessage().startswith("Unable to initialize backend 'tpu'"))


def quiet_logging(keep_info: bool = False) -> None:
    """Install `_QuietOrbax` on absl's logger, through which orbax logs, and `_QuietNoTpu` on jax's
    backend logger (replacing earlier ones). The CLIs call it; they pass keep_info=True where the
    user asked for logs with --verbosity."""
    for name, kind in (("absl", _QuietOrbax), ("jax._src.xla_bridge", _QuietNoTpu)):
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, kind)]:
            logger.removeFilter(f)
        logger.addFilter(kind(keep_info))


def make_manager(workdir: str, *, max_to_keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                           create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "data": grain.PyGrainCheckpointHandler()})


def make_best_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min",
                                           enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"), options=options,
                                 item_handlers={"params": ocp.StandardCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, *, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      data=grain.PyGrainCheckpointSave(data_iterator)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """-> (state, step) from the newest checkpoint, or (None, 0) if there is none.

    abstract_state: jax.ShapeDtypeStruct tree with shardings; data_iterator is restored in place.
    """
    step = manager.latest_step()
    if step is None:
        return None, 0
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.PyGrainCheckpointRestore(data_iterator)))
    return restored["state"], step


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class PreemptionFlag:
    """SIGTERM -> `requested` becomes True (the loop saves and exits at the next step boundary)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self, step: int) -> bool:
        """True on every process once any process got SIGTERM (multi-host: jax's sync point)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            try:
                return self.requested or multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service not set up (e.g. CPU runs)
                return bool(multihost_utils.process_allgather(self.requested).any())
        return self.requested


def load_trained(workdir: str, *, which: str = "ema", step: int | None = None):
    """A training workdir -> (experiment ConfigDict, DiTConfig, params) for editing/evaluation.

    which: "ema" (the EMA params if the run kept them, else the raw ones), "params" (raw, latest
    step) or "best" (best validation loss). step: an earlier checkpoint the workdir still keeps
    (None: the newest). Errors name what is missing. A release folder (anchoredit_jax.release)
    holds one set of weights: `which` does not apply to it, and a `step` is refused.
    """
    import json

    import ml_collections

    from anchoredit_jax import release
    from anchoredit_jax.config_lib import model_config

    if release.is_release(workdir):
        if step is not None:
            raise ValueError(f"{workdir} is a release: it holds the weights of one step, not step {step}")
        return release.load(workdir)
    workdir = os.path.abspath(workdir)
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{workdir} is not a training workdir: it has no config.json")
    with open(cfg_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    sub = "best" if which == "best" else "checkpoints"
    if which not in ("ema", "params", "best"):
        raise ValueError(f"which must be 'ema', 'params' or 'best', got {which!r}")
    root = os.path.join(workdir, sub)
    item = "params" if which == "best" else "state"
    tree = restore_on_one_device(os.path.join(root, str(pick_step(root, step)), item))
    if which != "best":
        tree = tree["ema"] if which == "ema" and tree.get("ema") is not None else tree["params"]
    return config, model_config(config), tree


def trained_step(path: str, which: str = "ema", step: int | None = None) -> int:
    """The step of the weights load_trained(path, which, step) returns (a release: the step it was made from)."""
    import json

    from anchoredit_jax import release

    if release.is_release(path):
        with open(os.path.join(path, "release.json")) as f:
            return int(json.load(f)["step"])
    return pick_step(os.path.join(path, "best" if which == "best" else "checkpoints"), step)


def pick_step(root: str, step: int | None = None) -> int:
    """`step` if the checkpoint root keeps it, else FileNotFoundError naming the steps it keeps
    (max_to_keep drops old ones); None: the newest."""
    if step is None:
        return latest_step(root)
    kept = kept_steps(root)
    if step not in kept:
        raise FileNotFoundError(f"{root} keeps no step {step} (it keeps {kept or 'none'})")
    return step


def kept_steps(root: str) -> list[int]:
    """The step folders under a checkpoint root, oldest first ([] if there is no such folder)."""
    return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def latest_step(root: str) -> int:
    """The newest step folder under a checkpoint root; FileNotFoundError naming it if there is none."""
    steps = kept_steps(root)
    if not steps:
        raise FileNotFoundError(f"{root} holds no checkpoint")
    return steps[-1]


def on_one_device(tree):
    """Shape/dtype tree -> restore target on this process's first device. Without a sharding orbax
    reuses the saved one and refuses checkpoints from another topology (CPU-saved, GPU-loaded)."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree)


def restore_on_one_device(path: str):
    """An orbax item restored onto one device, whatever topology saved it (an 8-GPU run edited on a laptop)."""
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        return ckptr.restore(path, on_one_device(getattr(meta, "item_metadata", meta)))
