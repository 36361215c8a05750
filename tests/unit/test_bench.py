"""Smoke tests of the benchmark scripts in bench/: each core function runs on a minuscule size.

No timing is asserted (a shared CI machine makes timings meaningless); what is asserted is that
the numbers exist and are sane, that the Llama comparison compares the same function, and that
BENCHMARKS.md sections are replaced without touching anyone else's.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    """Import bench/NAME.py the way `python bench/NAME.py` sees its siblings."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


# ------------------------------------------------------------------------------------ harness


def test_update_benchmarks_md_replaces_only_its_own_section(tmp_path):
    harness = load("harness")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        "# Benchmarks\n\nintro\n\n<!-- bench:loader -->\nloader v1\n<!-- /bench:loader -->\n"
    )
    harness.update_benchmarks_md("train_step", "## step\nv1", md)
    harness.update_benchmarks_md("train_step", "## step\nv2", md)
    text = md.read_text()
    assert "loader v1" in text and "intro" in text
    assert "v2" in text and "\nv1\n" not in text
    assert text.count("<!-- bench:train_step -->") == 1


def test_time_steps_counts_only_timed_calls():
    harness = load("harness")
    calls = []
    times = harness.time_steps(lambda: calls.append(1), steps=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)


# --------------------------------------------------------------------------------- train step


@pytest.mark.slow  # importing transformers and building Llama: ~5 s on 2 cores
def test_llama_copy_computes_the_same_function():
    pytest.importorskip("transformers")
    b = load("bench_train_step")
    ours = b.build_lmstream(b.QUICK)
    llama = b.build_llama_like(ours)
    inputs, _ = b.random_batch(b.QUICK)
    assert b.max_logit_difference(ours, llama, inputs) < 1e-4
    # A different model must not pass the same check (the check can fail).
    other = b.build_llama_like(b.build_lmstream(b.QUICK, seed=1))
    assert b.max_logit_difference(ours, other, inputs) > 1e-3


@pytest.mark.slow
def test_train_step_run_reports_both_models():
    pytest.importorskip("transformers")
    b = load("bench_train_step")
    tiny = b.Shape(
        hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64, vocab=128, seq=16, batch=2
    )
    result = b.run(tiny, reps=2, steps=1, compile_too=False)
    assert set(result["tokens_per_s"]) == {"lmstream eager", "llama eager"}
    assert all(v > 0 for v in result["tokens_per_s"].values())
    assert result["ratio_lmstream_over_llama"]["eager"] > 0
    text = b.report(result, "python bench/bench_train_step.py")
    assert "| eager |" in text and "max |logit difference|" in text


def test_train_step_actually_trains():
    pytest.importorskip("transformers")
    b = load("bench_train_step")
    ours = b.build_lmstream(b.QUICK)
    step = b.make_train_step(ours, *b.random_batch(b.QUICK))
    losses = [float(step()) for _ in range(5)]
    assert losses[-1] < losses[0]  # the same batch over and over: the loss must fall


# ------------------------------------------------------------------------------------ scaling


def test_scaling_point_and_chart(tmp_path):
    s = load("bench_scaling")
    point = s.measure_point("micro", seq=16, batch=2, steps=1, vocab=64)
    assert point["tokens_per_s"] > 0 and point["gflops_per_s"] > 0
    assert point["peak_mib"] >= point["baseline_mib"] > 0
    assert point["params"] > 0
    points = [
        {**point, "sweep": "size", "vocab": 64},
        {**point, "sweep": "seq", "vocab": 64},
        {"size": "tiny", "seq": 16, "batch": 1, "error": "boom", "sweep": "size", "vocab": 64},
    ]
    s.chart(points, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = s.report(points, "python bench/bench_scaling.py", "cpu")
    assert "failed: boom" in text and "| micro |" in text


def test_scaling_plan_covers_sizes_and_sequence_lengths():
    s = load("bench_scaling")
    full = s.plan(quick=False, sizes=["tiny", "125m"])
    assert [p[1] for p in full if p[0] == "size"] == ["tiny", "125m"]
    seq_points = [p for p in full if p[0] == "seq"]
    assert len({p[2] for p in seq_points}) >= 3
    assert len({p[2] * p[3] for p in seq_points}) == 1  # constant tokens per step


# ------------------------------------------------------------------------------------- gpu_1b


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_1b_without_cuda_says_so(capsys):
    g = load("gpu_1b")
    assert g.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_1b_variant_logic_on_cpu():
    g = load("gpu_1b")
    args = g.parse_args(["--cpu-smoke", "--variants", "eager,eager + AC"])
    results = g.run_variants(args, torch.device("cpu"))
    assert set(results) == {"eager", "eager + AC"}
    for r in results.values():
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["flops_per_token"])
    assert "| eager + AC |" in g.report(results, args, torch.device("cpu"))


def test_gpu_1b_rejects_unknown_variant():
    g = load("gpu_1b")
    with pytest.raises(SystemExit):
        g.parse_args(["--variants", "turbo"])


# ------------------------------------------------------------------------------------ run_all


def test_run_all_discovers_and_passes_flags():
    r = load("run_all")
    names = [p.stem for p in r.discover()]
    assert {"bench_train_step", "bench_scaling", "gpu_1b", "gpu_loop"} <= set(names)
    assert names.index("bench_train_step") < names.index("bench_scaling") < names.index("gpu_1b")
    cmd = r.command_for(BENCH_DIR / "bench_train_step.py", quick=True, record=True)
    assert "--quick" in cmd and "--record" not in cmd  # quick numbers are never recorded
    cmd = r.command_for(BENCH_DIR / "bench_train_step.py", quick=False, record=True)
    assert "--record" in cmd and "--quick" not in cmd


# ------------------------------------------------------------------------------ loop overhead


@pytest.mark.slow  # trains a small BPE and imports the training stack
def test_loop_overhead_config_and_bare_step(tmp_path):
    lo = load("bench_loop_overhead")
    params = {**lo.QUICK, "docs": 40, "vocab": 280}
    tok = lo.write_corpus_and_tokenizer(tmp_path, params["vocab"], params["docs"])
    config = lo.write_config(tmp_path, tok, params, seq=16, batch=2)
    cfg = lo.load_training_config(config)
    assert cfg.model.activation == "swiglu" and cfg.runtime.evaluation.every_n_steps == 4
    assert cfg.scheduler.total_steps == params["steps"]
    step = lo.bare_step(cfg, vocab=280)
    assert len(lo.time_steps(step, steps=2, warmup=1)) == 2
    child = lo.bare_child(config, vocab=280, steps=1)
    assert child["tokens_per_s"] > 0 and child["tokens_per_cpu_s"] > 0


def test_loop_throughput_skips_the_warmup_interval():
    lo = load("bench_loop_overhead")
    records = [
        {"step": 10, "tokens_seen": 1000, "tokens_per_s": 10.0},  # warm-up: excluded
        {"step": 10, "val_loss": 3.0},
        {"step": 20, "tokens_seen": 2000, "tokens_per_s": 100.0},  # 10 s
        {"step": 30, "tokens_seen": 3000, "tokens_per_s": 50.0},  # 20 s
    ]
    out = lo.loop_throughput(records)
    assert out["tokens_per_s"] == pytest.approx(2000 / 30)
    assert out["evaluations"] == 1


def test_loop_overhead_workers_and_interval_options(tmp_path, monkeypatch):
    lo = load("bench_loop_overhead")
    assert lo.FULL["num_workers"] == 1 and lo.FULL["every"] == 50  # the recorded defaults
    params = {**lo.FULL, "num_workers": 0, "every": 1000}
    config = lo.write_config(tmp_path, tmp_path / "tok.json", params, seq=16, batch=2)
    cfg = lo.yaml.safe_load(config.read_text())
    assert cfg["data"]["num_workers"] == 0
    assert cfg["runtime"]["checkpoint"]["every_n_steps"] == 1000
    assert cfg["runtime"]["evaluation"]["every_n_steps"] == 1000
    # the long run's extra evaluations: the one at 50 (100 is the final one both runs make)
    assert lo.periodic_in_difference(lo.FULL) == 1 and lo.periodic_in_difference(params) == 0
    assert lo.periodic_in_difference({**lo.FULL, "every": 20}) == 4  # 20, 40, 60, 80
    assert lo.periodic_in_difference(lo.QUICK) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    result = {
        "params": params, "seq": 256, "batch": 8, "vocab": 8000, "loop_runs": [{}, {}],
        "bare_tokens_per_cpu_s": 1000.0, "loop_tokens_per_cpu_s": 990.0, "overhead_cpu": 0.01,
        "bare_tokens_per_s": 2000.0, "loop_tokens_per_s": 1900.0, "overhead": 0.05,
        "threads": lo.thread_settings(),
    }  # fmt: skip
    text = lo.report(result, "python bench/bench_loop_overhead.py --num-workers 0")
    assert "every 1000, no DataLoader worker" in text and "OMP_NUM_THREADS=1" in text
    assert "no periodic evaluation or checkpoint" in text and "| 1.0% | yes |" in text
    one = lo.report({**result, "params": lo.FULL, "threads": {}}, "cmd")
    assert "every 50, 1 DataLoader worker (the seed" in one
    assert "one periodic evaluation and checkpoint" in one
    with pytest.raises(SystemExit):
        lo.main(["--num-workers", "-1"])


def test_train_step_profile_table_lists_matmuls():
    b = load("bench_train_step")
    tiny = b.Shape(
        hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64, vocab=128, seq=16, batch=2
    )
    assert "aten::mm" in b.profile_table(tiny, "lmstream", rows=50)


# ----------------------------------------------------------------------------------- gpu_loop


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_loop_without_cuda_says_so(capsys, tmp_path):
    g = load("gpu_loop")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")  # prepared: nothing is trained
    (tmp_path / "train.jsonl").write_text("")
    assert g.main(["--workdir", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_loop_figures_separate_steady_steps_from_checkpoint_steps():
    g = load("gpu_loop")
    tokens = 1000
    # Steps 1-2 warm up (slow), step 5 carries the evaluation + checkpoint of step 4.
    seconds = {1: 9.0, 2: 3.0, 3: 1.0, 4: 1.2, 5: 11.0, 6: 0.8, 7: 1.0}
    records, seen = [], 0
    for step, s in seconds.items():
        seen += tokens
        records.append({"step": step, "tokens_seen": seen, "tokens_per_s": tokens / s})
        if step == 4:
            records.append({"step": 4, "val_loss": 5.0})
    figures = g.loop_figures(records, every=4, tokens_per_step=tokens)
    assert figures["steady_steps"] == 4
    assert figures["step_s"] == pytest.approx(1.0)
    assert figures["eval_and_checkpoint_s"] == pytest.approx(10.0)


@pytest.mark.slow
def test_gpu_loop_logic_on_cpu(tmp_path):
    g = load("gpu_loop")
    args = g.parse_args(["--cpu-smoke", "--variants", "seed", "--workdir", str(tmp_path)])
    tokenizer_json = g.prepare(tmp_path, args.vocab, max_docs=300)
    result = g.measure("seed", tmp_path, tokenizer_json, 300, args)
    assert result["loop_tokens_per_s"] > 0 and result["bare_tokens_per_s"] > 0
    assert result["steady_steps"] >= 2 and result["eval_and_checkpoint_s"] is not None
    assert "| seed | 2 x 2 |" in g.report([result], args, 300)


def test_gpu_loop_rejects_too_few_steps():
    g = load("gpu_loop")
    with pytest.raises(SystemExit):
        g.parse_args(["--steps", "5", "--every", "4"])


def test_the_cpu_pair_report_says_the_load_once():
    """machine_description already ends with the load average; the report said it twice."""
    bench = load("bench_cpu_small")
    result = {"seconds": {"minimal": [2.0], "lmstream": [1.0]}, "ratio": 2.0, "steps": 10,
              "machine": bench.machine_description(), "load_average": 1.0, "date": "today",
              "num_workers": 1}  # fmt: skip
    text = bench.report(result, "python bench/bench_cpu_small.py")
    assert text.count("load average") <= 1, text


def test_the_cpu_pair_report_gives_each_pairs_ratio_and_the_ratio_of_the_sums():
    """The median of a few pairs hides how far they spread; the record needs both."""
    bench = load("bench_cpu_small")
    result = {"seconds": {"minimal": [110.0, 100.0, 90.0], "lmstream": [100.0, 100.0, 100.0]},
              "ratio": 1.0, "steps": 10, "machine": "m", "date": "today",
              "num_workers": 0}  # fmt: skip
    text = bench.report(result, "python bench/bench_cpu_small.py")
    assert "each pair: 1.100, 1.000, 0.900" in text
    assert "300.0 s / 300.0 s = 1.000x" in text
