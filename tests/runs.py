"""Test helpers on training workdirs: one as it was after an earlier step; the steps a profile traced.

A resume test needs a run interrupted at step s and the same run carried to the end. Training the
interrupted run again costs a whole extra trace and compile of the step; the workdir of the full
run, cut back to step s, is the same thing: with checkpoint.every dividing s, its checkpoint s is
the one the interrupted run would have written (same config, same steps), and the data iterator's
position is saved with it. The SIGKILL/SIGTERM tests in test_train.py cover the interruption itself.
"""
import glob
import gzip
import json
import os
import re
import shutil


def rewind(src, dst, step: int) -> str:
    """Copy workdir src to dst without anything written after `step`: checkpoints and best
    checkpoints past it, previews past it and metrics rows past it (tensorboard files are kept:
    a resumed run starts a new one). -> dst."""
    src, dst = str(src), str(dst)
    shutil.copytree(src, dst)
    if not os.path.isdir(os.path.join(dst, "checkpoints", str(step))):
        raise ValueError(f"{src} has no checkpoint at step {step} to rewind to")
    for sub in ("checkpoints", "best"):
        folder = os.path.join(dst, sub)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if name.isdigit() and int(name) > step:
                shutil.rmtree(os.path.join(folder, name))
    samples = os.path.join(dst, "samples")
    for name in os.listdir(samples) if os.path.isdir(samples) else ():
        m = re.fullmatch(r"step_(\d+)\.png", name)
        if m and int(m.group(1)) > step:
            os.remove(os.path.join(samples, name))
    path = os.path.join(dst, "metrics.jsonl")
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(rows)
    return dst


def traced_steps(workdir, name="train"):
    """-> the step numbers of `name` StepTraceAnnotations in each trace under workdir/profile."""
    traces = sorted(glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.trace.json.gz")))
    out = []
    for path in traces:
        assert os.path.exists(path.replace(".trace.json.gz", ".xplane.pb"))  # what TensorBoard/xprof reads
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
        out.append(sorted({int(e["args"]["step_num"]) for e in events
                           if e.get("name") == name and "step_num" in e.get("args", {})}))
    return out
