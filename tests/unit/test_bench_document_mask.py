"""Smoke test of bench/bench_document_mask.py and gpu_1b.py's --document-masking on a
minuscule size: the numbers exist, the masked model is the plain one on a single document, and
the packed rows hold several documents. No timing is asserted."""

from __future__ import annotations

import torch
from tests.unit.test_bench import load


def test_document_mask_bench_runs_and_checks_the_same_function():
    b = load("bench_document_mask")
    args = b.parse_args(["--quick"])
    result = b.measure(args)
    assert result["single_document_max_abs_diff"] < 1e-5
    assert result["documents_per_row"] > 2
    assert all(v > 0 for v in result["tokens_per_s"].values())
    assert "Masked / causal tokens/s" in b.report(result, args)


def test_gpu_1b_document_masking_flag_adds_masked_variants():
    g = load("gpu_1b")
    args = g.parse_args(["--cpu-smoke", "--variants", "eager", "--document-masking"])
    results = g.run_variants(args, torch.device("cpu"))
    assert set(results) == {"eager", "eager + document mask"}
    assert results["eager + document mask"]["vs_causal"] > 0
    assert "x causal)" in g.report(results, args, torch.device("cpu"))
