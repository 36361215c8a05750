"""`lmstream export` writes a model card the Hub parses, and `--push-to-hub` uploads every file
(and nothing secret) to a loopback stand-in of the Hub's API; a failed upload keeps the export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.support.hub_server import HubStandIn
from tests.support.training import tiny_training_config, write_kjv_corpus, write_run

from lmstream.cli import main as cli_main

pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

pytestmark = pytest.mark.slow
STEPS = 3
TOKEN = "hf_lmstreamTestToken0123456789abcdef"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 3-step run, then a streaming_config.json naming a Hub dataset (as `orchestrate
    --stream` leaves beside training.yaml) and harness results beside the checkpoint."""
    root = tmp_path_factory.mktemp("card")
    corpus = write_kjv_corpus(root, 80, 300)
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            cli_main(
                ["train", "--config", str(write_run(run, tiny_training_config(corpus, STEPS)))]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    stream = {"dataset": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT", "split": "train"}
    (run / "streaming_config.json").write_text(json.dumps(stream))
    results = {"tasks": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.04, "acc_norm": 0.3}}}
    (run / "checkpoints" / f"step-{STEPS:08d}" / "eval_results.json").write_text(
        json.dumps(results)
    )
    return run


def _last_val_loss(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in records if r.get("val_loss") is not None][-1]


def test_the_model_card_parses_as_hub_metadata_and_states_the_run(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    args = ["export", "--checkpoint", str(run_dir), "--out", str(out), "--license", "apache-2.0"]
    assert cli_main(args) == 0
    card = huggingface_hub.ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0"
    assert data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert "lmstream" in data.tags
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert scores == {("arc_easy", "acc"): 0.25, ("arc_easy", "acc_norm"): 0.3}

    from transformers import AutoModelForCausalLM

    params = AutoModelForCausalLM.from_pretrained(str(out)).num_parameters()
    text = card.text
    assert f"| parameters | {params:,} " in text
    assert f"| tokens seen | {STEPS * 4 * 32:,} " in text
    assert f"| validation loss | {_last_val_loss(run_dir):.4f} " in text
    assert "| optimizer steps | 3 |" in text
    assert "- HuggingFaceFW/fineweb-edu, subset sample-10BT, split train" in text
    assert "| arc_easy | acc | 0.2500 ± 0.0400 |" in text


def _hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    return env | {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }


def test_push_to_hub_uploads_every_file_and_nothing_secret(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    with HubStandIn() as hub:
        proc = subprocess.run(
            [sys.executable, "-m", "lmstream", "export", "--checkpoint", str(run_dir),
             "--out", str(out), "--push-to-hub", "me/tiny-kjv", "--private", "--revision", "v1"],
            env=_hub_env(tmp_path, hub.url), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "uploaded" in proc.stdout and "me/tiny-kjv" in proc.stdout
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= local.keys()
    assert hub.repos["me/tiny-kjv"]["v1"] == local  # every file, byte for byte, on the branch
    assert hub.created[0].get("visibility") == "private" or hub.created[0].get("private") is True
    # The token went to the Hub as a header, and nowhere else.
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h, _ in hub.requests)
    assert TOKEN not in proc.stdout + proc.stderr
    assert not any(TOKEN.encode() in content for content in local.values())
    card = huggingface_hub.ModelCard(local["README.md"].decode())
    assert 'from_pretrained("me/tiny-kjv")' in card.text


def test_a_failed_upload_is_one_line_and_keeps_the_export(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "hf"
    # The tests run with HF_HUB_OFFLINE=1: huggingface_hub refuses every request, a real failure.
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    args = ["export", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "me/x"]
    assert cli_main(args) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "lmstream export: error: --push-to-hub me/x: upload failed"
    )
    assert err[0].endswith(f"the local export is kept in {out}")
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_push_flags_are_checked_before_exporting(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(run_dir), "--out", str(out), "--private"]) == 2
    assert "--private and --revision go with --push-to-hub" in capsys.readouterr().err
    args = ["export", "--checkpoint", str(run_dir), "--out", str(out), "--push-to-hub", "no-owner"]
    assert cli_main(args) == 2
    assert "--push-to-hub: expected OWNER/NAME" in capsys.readouterr().err
    assert not out.exists()


def test_the_card_survives_damaged_run_files_and_names_no_local_path(
    run_dir: Path, tmp_path: Path
) -> None:
    """A malformed eval_results.json, a metrics.jsonl line with no step, and a stream read from
    a local folder: the export still writes a card (these files only add to it), and the card,
    written to be published, shows the local dataset by its name, not the user's absolute path
    (nor lists it as a Hub dataset)."""
    corpus = run_dir.parent  # write_kjv_corpus's folder: train.jsonl and tok/
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = write_run(run, tiny_training_config(corpus, 2))
        assert cli_main(["train", "--config", str(config)]) == 0
    finally:
        torch.set_num_threads(threads)
    local_data = tmp_path / "private-data" / "my_corpus"
    local_data.mkdir(parents=True)
    stream = {"dataset": str(local_data), "split": "train"}
    (run / "streaming_config.json").write_text(json.dumps(stream))
    step_dir = run / "checkpoints" / "step-00000002"
    (step_dir / "eval_results.json").write_text(json.dumps({"tasks": ["arc_easy"]}))
    val_loss = _last_val_loss(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": None, "val_loss": 9.0}) + "\n")

    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    card = huggingface_hub.ModelCard(text)
    assert card.data.datasets is None
    assert str(tmp_path) not in text
    assert "- my_corpus, split train" in text
    assert f"| validation loss | {val_loss:.4f} " in text


def test_private_never_uploads_into_an_existing_public_repo(run_dir: Path, tmp_path: Path) -> None:
    """--private with a repo that already exists and is public: create_repo(exist_ok) leaves it
    public, so the upload would publish what the user asked to keep private. Nothing is sent."""
    out = tmp_path / "hf"
    with HubStandIn() as hub:
        hub.repos["me/public-one"] = {"main": {}}
        hub.private["me/public-one"] = False
        proc = subprocess.run(
            [sys.executable, "-m", "lmstream", "export", "--checkpoint", str(run_dir),
             "--out", str(out), "--push-to-hub", "me/public-one", "--private"],
            env=_hub_env(tmp_path, hub.url), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 6, proc.stderr
    assert hub.repos["me/public-one"] == {"main": {}}  # no commit
    err = proc.stderr.strip().splitlines()
    assert err == [
        "lmstream export: error: --private: me/public-one already exists and is public; "
        f"nothing was uploaded (make it private on the Hub, or drop --private); the local "
        f"export is kept in {out}"
    ]
    assert (out / "model.safetensors").is_file()
