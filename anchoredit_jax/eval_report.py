"""What `anchoredit_jax.evaluate` writes: tables, CSVs, summary.json, plots and contact sheets.

The files (in --out): metrics.csv, per_sequence.csv.gz, summary.json, metric_<name>.png,
contact_sheet*.png and table.md; evaluate.py's docstring says what each holds.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import io
import os

import jax
import numpy as np

from anchoredit_jax import edit as edit_cli
from anchoredit_jax import eval_metrics
from anchoredit_jax.data.contact_sheet import save_contact_sheet

OUR_FILES = ("metrics.csv", "per_sequence.csv.gz", "summary.json", "metric_*.png", "contact_sheet*.png", "table.md")
TABLE_TURNS = (1, 5, 10, 20, 30)
TABLE_METRICS = ("psnr", "ssim", "lpips", "identity_psnr", "edit_psnr", "kept_psnr", "edit_made", "edits_kept",
                 "kept_after", "source_psnr", "clip_i", "clip_t", "dino")


def curves(results) -> dict:
    """{(method, protocol): {metric: (mean [K], n [K])}}"""
    return {key: {m: eval_metrics.aggregate(v, ok) for m, (v, ok) in vals.items()} for key, vals in results.items()}


def _num(x: float):
    return None if not np.isfinite(x) else round(float(x), 6)


def format_table(cur, methods, datasets, turns: int) -> str:
    show = [t for t in TABLE_TURNS if t <= turns] + ([turns] if turns not in TABLE_TURNS else [])
    lines = []
    for d in datasets:
        for metric in (m for m in TABLE_METRICS if m in cur[(methods[0].name, d.name)]):
            rows = [(m.name, cur[(m.name, d.name)][metric]) for m in methods]
            if not any(n.sum() for _, (_, n) in rows) or (metric.startswith("source") and d.has_target.all()):
                continue  # vs-source figures matter where targets are missing (the csv has them all)
            arrow = "higher" if eval_metrics.HIGHER_IS_BETTER[metric] else "lower"
            axis = "after" if metric in eval_metrics.BY_AGE else "turn"  # BY_AGE: turns since the edit
            lines += [f"\n{d.name}: {metric} ({arrow} is better; n = sequences counted)", "",
                      "| method | " + " | ".join(f"{axis} {t}" for t in show) + " |",
                      "|---|" + "---|" * len(show)]
            for name, (mean, n) in rows:
                cells = [f"{mean[t - 1]:.4g} ({n[t - 1]})" if n[t - 1] else "-" for t in show]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip("\n") + "\n"


def format_timings(timings: dict) -> str:
    lines = ["", "seconds per turn (median over batches after the first, compiled; one batch of edits)", "",
             "| method / protocol | batch | s per turn |", "|---|---|---|"]
    for name, t in timings.items():
        note = " (incl. compile: one batch only)" if t["includes_compile"] else ""
        lines.append(f"| {name} | {t['batch_size']} | {t['seconds_per_turn']:.4f}{note} |")
    return "\n".join(lines) + "\n"


def plot_curves(cur, methods, datasets, turns: int, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in (m for m in eval_metrics.METRICS + eval_metrics.FEATURE_METRICS if m in cur[next(iter(cur))]):
        shown = [d for d in datasets if any(cur[(m.name, d.name)][metric][1].sum() for m in methods)]
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.2), dpi=110, squeeze=False)
        for ax, d in zip(axes[0], shown):
            for m in methods:
                mean, _ = cur[(m.name, d.name)][metric]
                ax.plot(np.arange(1, turns + 1), mean, marker="o", ms=2.5, label=m.name)
            xlabel = "turns since the edit" if metric in eval_metrics.BY_AGE else "turn"
            ax.set(xlabel=xlabel, title=f"{d.name}: {metric}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out, f"metric_{metric}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def contact_rows(d, methods, sheets, max_cols: int = 10) -> list:
    """Per shown sequence of d (evaluate.Batchable): ground truth row (source + targets), then a row per method."""
    k = d.targets.shape[1]
    turns = np.unique(np.linspace(0, k - 1, min(k, max_cols)).round().astype(int))
    rows = []
    for i in range(len(next(iter(sheets.values())))):
        rows.append([(d.source[i], f"{d.name} #{d.seeds[i]}: source")]
                    + [(d.targets[i, t] if d.has_target[i, t] else np.full_like(d.source[i], 255),
                        f"GT {t + 1}. {d.instructions[i][t]}") for t in turns])
        rows += [[(d.source[i], m.name)] + [(sheets[m.name][i, t], f"{t + 1}") for t in turns] for m in methods]
    return rows


def write_outputs(args, methods, datasets, loaded, results, sheets, timings) -> None:
    os.makedirs(args.out, exist_ok=True)
    for pattern in OUR_FILES:  # stale plots of an earlier run would mislead; the user's files stay
        for path in glob.glob(os.path.join(args.out, pattern)):
            os.remove(path)
    cur = curves(results)
    with open(os.path.join(args.out, "metrics.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "protocol", "turn", "metric", "value", "n"])
        for (mname, pname), per in cur.items():
            for metric, (mean, n) in per.items():
                for t in range(args.turns):
                    w.writerow([mname, pname, t + 1, metric, "" if not n[t] else f"{mean[t]:.6g}", int(n[t])])
    seeds = {d.name: d.seeds for d in datasets}
    with gzip.GzipFile(os.path.join(args.out, "per_sequence.csv.gz"), "wb", mtime=0) as gz:  # same run, same bytes
        fh = io.TextIOWrapper(gz, newline="")
        w = csv.writer(fh)
        w.writerow(["method", "protocol", "sequence", "turn", "metric", "value"])
        for (mname, pname), vals in results.items():
            for metric, (v, ok) in vals.items():
                for i, k in zip(*np.nonzero(ok)):
                    w.writerow([mname, pname, seeds[pname][i], k + 1, metric, f"{v[i, k]:.6g}"])
        fh.flush()
        fh.detach()
    summary = dict(
        settings={k: v for k, v in vars(args).items()}, jax_version=jax.__version__,
        device=str(jax.devices()[0]), psnr_cap_db=eval_metrics.PSNR_CAP,
        checkpoints={k: ld.info for k, ld in loaded.items()},
        methods=[dict(name=m.name, checkpoint=m.checkpoint, kind=m.kind, window=m.window, anchor=m.keep_anchor,
                      **dataclasses.asdict(m.settings)) for m in methods],
        protocols={d.name: dict(sequences=len(d.seeds), seeds=d.seeds) for d in datasets},
        seconds_incl_compile={k: t["seconds_incl_compile"] for k, t in timings.items()},
        seconds_per_turn={k: {f: t[f] for f in ("seconds_per_turn", "batch_size", "includes_compile")}
                          for k, t in timings.items()},
        curves={f"{mn} | {pn}": {metric: dict(value=[_num(x) for x in mean], n=[int(x) for x in n])
                                 for metric, (mean, n) in per.items()} for (mn, pn), per in cur.items()})
    edit_cli.write_json(os.path.join(args.out, "summary.json"), summary)
    table = format_table(cur, methods, datasets, args.turns) + format_timings(timings)
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(table)
    print(table)
    plot_curves(cur, methods, datasets, args.turns, args.out)
    for i, d in enumerate(datasets if args.sheet else []):
        rows = contact_rows(d, methods, {m.name: sheets[(m.name, d.name)] for m in methods})
        name = "contact_sheet.png" if i == 0 else f"contact_sheet_{d.name}.png"
        save_contact_sheet(rows, os.path.join(args.out, name))
