"""``pix2pix-lit compare RUN_DIR...``: config differences and best/last metrics of runs, plus a PNG of curves.

Reads what runs wrote locally (``config.yaml`` and ``csv/version_*/metrics.csv`` in each run folder);
no network. The same runs, synced with ``wandb sync``, compare in the W&B dashboard.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.loggers import flatten_config
from pix2pix_lit.modes import higher_is_better

DEFAULT_METRICS = ("val/fid", "val/kid_mean", "val/ssim", "val/psnr", "val/l1", "train/loss_G_L1")
IGNORED_CONFIG = ("trainer.logger", "trainer.callbacks", "config", "ckpt_path", "return_predictions")


class CompareError(Exception):
    pass


def read_run(run_dir: Path) -> dict[str, Any]:
    """{"name", "config": flat dict or None (no config.yaml), "history": {metric: [(step, value)]}} of one run
    folder; a CompareError naming the file for what cannot be read."""
    if not run_dir.exists():
        raise CompareError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise CompareError(f"{run_dir} is a file, not a run folder; give the folder a fit wrote (trainer.default_root_dir)")
    cfg_path = run_dir / "config.yaml"
    config = None
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise CompareError(f"{cfg_path} cannot be read as YAML ({type(e).__name__}); remove it or restore it from the "
                               "run's W&B files") from None
        if not isinstance(loaded, dict):
            raise CompareError(f"{cfg_path} holds a {type(loaded).__name__}, not a run's config")
        config = flatten_config(loaded)
    files = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not files:
        raise CompareError(f"{run_dir} has no csv/version_*/metrics.csv; was it trained with the CSVLogger of the shipped configs?")
    history: dict[str, dict[int, float]] = {}
    for path in files:  # later versions (resumed fits) override the same steps
        line = 1
        try:
            with open(path, newline="") as f:
                for line, row in enumerate(csv.DictReader(f), start=2):
                    step = int(float(row.get("step") or 0))
                    for key, value in row.items():
                        if key in ("epoch", "step") or value in (None, ""):
                            continue
                        history.setdefault(key, {})[step] = float(value)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
            raise CompareError(f"{path} is not a metrics table the CSVLogger wrote ({type(e).__name__} near line "
                               f"{line}); remove it or the run") from None
    return {
        "name": run_dir.name if run_dir.name not in ("", ".") else str(run_dir),
        "config": config,
        "history": {k: sorted(v.items()) for k, v in history.items()},
    }


def config_differences(runs: list[dict]) -> list[tuple[str, list[Any]]]:
    """The options whose values differ between the runs that have a config.yaml (``?`` for a run without)."""
    known = [r["config"] for r in runs if r["config"] is not None]
    if len(known) < 2:
        return []
    keys = sorted(set().union(*known))
    diffs = []
    for key in keys:
        if key.startswith(IGNORED_CONFIG) or key.endswith(".dirpath"):
            continue
        values = [r["config"].get(key, "-") if r["config"] is not None else "?" for r in runs]
        if any(repr(v) != repr(known[0].get(key, "-")) for v in values if v != "?"):
            diffs.append((key, values))
    return diffs


def default_metrics(runs: list[dict]) -> tuple[str, ...]:
    """The default metrics as the runs logged them: ``val/fid`` for pix2pix, ``val/fid_B``/``val/fid_A`` (and
    the cycle loss) for CycleGAN; all of DEFAULT_METRICS when none was logged."""
    logged = set().union(*(r["history"] for r in runs))
    candidates = [name for m in DEFAULT_METRICS for name in (m, f"{m}_B", f"{m}_A")] + ["train/loss_cycle_A"]
    return tuple(m for m in candidates if m in logged) or DEFAULT_METRICS


def _best(metric: str, points: list[tuple[int, float]]) -> tuple[int, float]:
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    pick = max if higher_is_better(metric) else min
    return pick(finite, key=lambda p: p[1])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report(runs: list[dict], metrics: tuple[str, ...]) -> str:
    names = [r["name"] for r in runs]
    diffs = config_differences(runs)
    out = ["config differences:"]
    missing = [r["name"] for r in runs if r["config"] is None]
    if sum(r["config"] is not None for r in runs) < 2:
        out.append("  (not compared: fewer than two runs have a config.yaml)")
    else:
        out.append(_table(["option", *names], [[k, *map(_fmt, v)] for k, v in diffs]) if diffs else "  (none)")
    if missing:
        out.append(f"  ({', '.join(missing)}: no config.yaml, shown as ?)")
    header = ["run", "last step"]
    for m in metrics:
        header += [f"best {m} (step)", f"last {m}"]
    rows = []
    for r in runs:
        hist = r["history"]
        last_step = max((p[-1][0] for p in hist.values() if p), default=0)
        row = [r["name"], str(last_step)]
        for m in metrics:
            points = hist.get(m, [])
            if points:
                s, v = _best(m, points)
                row += [f"{_fmt(v)} ({s})", _fmt(points[-1][1])]
            else:
                row += ["-", "-"]
        rows.append(row)
    out += ["", "metrics:", _table(header, rows)]
    return "\n".join(out)


def check_output(path: Path) -> None:
    """The plot can be written to ``path``: not a folder, a suffix matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    if path.is_dir():
        raise CompareError(f"--output {path} is a folder; give a file name such as {path / 'compare.png'}")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise CompareError(f"--output {path}: the plot is written as {', '.join('.' + f for f in sorted(formats))}; "
                           "end the name with one of them")


def check_metrics(runs: list[dict], metrics: tuple[str, ...]) -> None:
    """At least one of ``metrics`` was logged by a run (else nothing would be reported): a CompareError naming
    what was logged."""
    logged = sorted(set().union(*(r["history"] for r in runs)))
    if not any(m in logged for m in metrics):
        raise CompareError(f"--metrics {' '.join(metrics)}: no run logged any of them; logged: {', '.join(logged) or 'nothing'}")


def plot(runs: list[dict], metrics: tuple[str, ...], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(r["history"].get(m) for r in runs)] or list(metrics[:1])
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    for ax, m in zip(axes[0], shown):
        for r in runs:
            pts = r["history"].get(m, [])
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if len(pts) < 30 else None,
                        markersize=3, label=r["name"])
        ax.set_title(m)
        ax.set_xlabel("step (batches)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    try:
        with staged_file(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pix2pix-lit compare",
        description="Compare runs: config differences, best/last metrics, and a PNG of metric curves.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (trainer.default_root_dir of each fit)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metrics to report and plot (default: FID, KID, SSIM, PSNR, L1 as the runs logged them)")
    parser.add_argument("--output", type=Path, default=Path("compare.png"), help="where to write the plot")
    args = parser.parse_args(argv)
    try:
        check_output(args.output)
        runs = [read_run(p) for p in args.runs]
        metrics = tuple(args.metrics) if args.metrics else default_metrics(runs)
        check_metrics(runs, metrics)
    except (CompareError, OSError) as e:
        print(f"pix2pix-lit compare: error: {e}", file=sys.stderr)
        return 2
    for r in runs:
        if r["config"] is None:
            print(f"pix2pix-lit compare: warning: {args.runs[runs.index(r)] / 'config.yaml'} is missing: that run's "
                  "options are not compared", file=sys.stderr)
    print(report(runs, metrics))
    print(f"\ncurves written to {plot(runs, metrics, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
