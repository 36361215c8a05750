"""Training curves as a PNG from a run's metrics.jsonl, for people without TensorBoard at hand."""

from __future__ import annotations

import json
from pathlib import Path

from lmstream.errors import LmstreamError
from lmstream.workspace import METRICS

PANELS = (
    ("Loss", (("loss", "train"), ("val_loss", "validation"))),
    ("Learning rate", (("lr", "lr"),)),
    ("Throughput (tokens/s)", (("tokens_per_s", "tokens/s"),)),
    ("Gradient norm", (("grad_norm", "grad norm"),)),
)


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; a torn last line (a run killed mid-write) is ignored."""
    if not path.is_file():
        raise LmstreamError(
            f"{path}: no metrics.jsonl here; pass a run folder that `lmstream train` wrote"
        )
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    if not records:
        raise LmstreamError(
            f"{path}: holds no metrics yet; train for at least log_every_n_steps steps"
        )
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; with a resumed run, the latest value per step wins."""
    by_step: dict[int, float] = {}
    for r in records:
        if isinstance(r.get(key), int | float):
            by_step[int(r["step"])] = float(r[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _source_panels(records: list[dict]) -> list[tuple]:
    """A mixture's panels: validation loss and tokens seen, one curve per source."""
    out = []
    for key, title in (("val_loss/", "Validation loss per source"),
                       ("tokens_seen/", "Tokens seen per source")):  # fmt: skip
        names = sorted({k[len(key) :] for r in records for k in r if k.startswith(key)})
        if names:
            out.append((title, tuple((key + n, n) for n in names)))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of RUN_DIR/metrics.jsonl to ``out`` (default RUN_DIR/curves.png)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS if run_dir.is_dir() else run_dir
    records = read_metrics(metrics)
    out = Path(out) if out else metrics.parent / "curves.png"
    panels = list(PANELS)
    # Harness results logged in the loop (eval/TASK/METRIC, stderr left out): one more panel.
    bench = sorted({k for r in records for k in r if k.startswith("eval/")})
    bench = [(k, k[len("eval/") :]) for k in bench if not k.endswith("_stderr")]
    if bench:
        panels.append(("Benchmarks (lm-evaluation-harness)", tuple(bench)))
    panels += _source_panels(records)
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.5 * rows))
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        drawn = False
        for key, label in keys:
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn and len(keys) > 1:
            ax.legend()
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"lmstream: {metrics.parent.name}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
