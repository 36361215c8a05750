"""Checkpoint format: atomic writes, rotation, best-by-loss, fallback past corruption, safe loading."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from lmstream.errors import CheckpointError
from lmstream.train import checkpoint as ck
from lmstream.train.checkpointer import BestCheckpoints, link_checkpoint
from lmstream.train.run_folder import rotate_lineage


def _state(value: float) -> dict[str, torch.Tensor]:
    w = torch.full((4, 3), value)
    return {"emb.weight": w, "head.weight": w, "norm.bias": torch.zeros(3)}  # tied, like the model


def _save(directory: Path, step: int, cfg, value: float = 1.0) -> Path:
    trainer = {"step": step, "rng": {"torch": torch.get_rng_state()}, "data": {"pos": [1, 2]}}
    return ck.save_checkpoint(directory, step, _state(value), cfg, trainer)


def test_save_writes_every_file_and_loads_back(tmp_path, small_config):
    path = _save(tmp_path / "ckpts", 7, small_config, 2.5)
    assert path.name == "step-00000007"
    names = {p.name for p in path.iterdir()}
    assert names == {
        "model.safetensors",
        "config.yaml",
        "tokenizer.json",
        "special_tokens.txt",
        "trainer_state.pt",
        "manifest.json",
    }
    manifest = ck.verify_checkpoint(path)
    assert manifest["step"] == 7 and set(manifest["files"]) == names - {"manifest.json"}
    state, cfg = ck.load_model_state(tmp_path / "ckpts")
    assert torch.equal(state["head.weight"], torch.full((4, 3), 2.5))
    assert cfg.model == small_config.model
    assert json.loads((path / "special_tokens.txt").read_text()) == ["<|endoftext|>", "<|pad|>"]
    assert ck.load_trainer_state(path)["data"] == {"pos": [1, 2]}


def test_leftover_temporary_folder_is_ignored(tmp_path, small_config):
    directory = tmp_path / "ckpts"
    _save(directory, 1, small_config)
    crashed = directory / ".tmp-step-00000002-999"  # a crash mid-write leaves this behind
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"half")
    assert ck.resolve_checkpoint(directory).name == "step-00000001"
    _save(directory, 3, small_config)
    assert not crashed.exists()  # the next save cleans it up


def test_folder_without_manifest_is_skipped(tmp_path, small_config):
    directory = tmp_path / "ckpts"
    _save(directory, 1, small_config)
    newest = _save(directory, 2, small_config)
    (newest / "manifest.json").unlink()
    assert ck.resolve_checkpoint(directory).name == "step-00000001"
    with pytest.raises(CheckpointError, match="incomplete"):
        ck.resolve_checkpoint(newest)


def test_rotation_keeps_exactly_max_keep(tmp_path, small_config):
    directory = tmp_path / "ckpts"
    for step in range(1, 6):
        newest = _save(directory, step, small_config)
        rotate_lineage(newest, 2)
    assert [p.name for p in ck.list_checkpoints(directory)] == ["step-00000004", "step-00000005"]
    rotate_lineage(newest, None)  # null = keep all
    assert len(ck.list_checkpoints(directory)) == 2


def test_best_keeps_the_lowest_losses(tmp_path, small_config):
    directory = tmp_path / "best"
    trainer = {"step": 0}
    losses = {1: 5.0, 2: 3.0, 3: 4.0, 4: 6.0, 5: 2.0}
    best = BestCheckpoints(directory, 2)
    for step, loss in losses.items():
        if best.qualifies(loss):
            best.keep(loss, lambda d, extra, step=step: ck.save_checkpoint(
                d, step, _state(float(step)), small_config, trainer, extra_manifest=extra
            ))  # fmt: skip
    kept = best.entries()
    assert [(loss, p.name) for loss, p in kept] == [(2.0, "step-00000005"), (3.0, "step-00000002")]
    assert len(ck.list_checkpoints(directory)) == 2


def test_link_checkpoint_shares_files_and_outlives_its_source(tmp_path, small_config):
    source = _save(tmp_path / "ckpts", 4, small_config, 3.0)
    best = link_checkpoint(source, tmp_path / "best", {"val_loss": 1.5})
    assert best == tmp_path / "best" / "step-00000004"
    for name in ck.read_manifest(source)["files"]:
        assert (best / name).stat().st_ino == (source / name).stat().st_ino  # no second write
    manifest = ck.verify_checkpoint(best)  # hashes re-checked against the shared bytes
    assert manifest["val_loss"] == 1.5 and manifest["step"] == 4
    assert "val_loss" not in ck.read_manifest(source)  # the source's manifest is untouched
    assert [(loss, p.name) for loss, p in BestCheckpoints(tmp_path / "best", 1).entries()] == [
        (1.5, "step-00000004")
    ]
    rotate_lineage(source, 0)  # the regular checkpoint rotates away
    assert not source.exists()
    ck.verify_checkpoint(best)
    state, _ = ck.load_model_state(best)
    assert torch.equal(state["head.weight"], torch.full((4, 3), 3.0))


def test_link_checkpoint_keeps_the_source_manifest_keys(tmp_path, small_config):
    trainer = {"step": 3}
    source = ck.save_checkpoint(
        tmp_path / "ckpts", 3, _state(1.0), small_config, trainer,
        extra_manifest={"format": "sharded", "world_size": 2},
    )  # fmt: skip
    manifest = ck.read_manifest(link_checkpoint(source, tmp_path / "best", {"val_loss": 2.0}))
    assert manifest["format"] == "sharded" and manifest["world_size"] == 2
    assert manifest["val_loss"] == 2.0


def test_link_checkpoint_refuses_an_incomplete_source(tmp_path, small_config):
    source = _save(tmp_path / "ckpts", 4, small_config)
    (source / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        link_checkpoint(source, tmp_path / "best")
    assert not (tmp_path / "best").exists() or not any((tmp_path / "best").iterdir())


def test_corrupted_newest_falls_back_with_warning(tmp_path, small_config, caplog):
    directory = tmp_path / "ckpts"
    _save(directory, 1, small_config)
    newest = _save(directory, 2, small_config)
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the sha256 catches it
    weights.write_bytes(bytes(data))
    assert ck.resolve_checkpoint(directory).name == "step-00000002"  # sizes alone: looks fine
    with caplog.at_level(logging.WARNING):
        assert ck.resolve_checkpoint(directory, check_hashes=True).name == "step-00000001"
    assert "sha256" in caplog.text
    with open(weights, "r+b") as f:  # truncated: caught by sizes alone
        f.truncate(10)
    assert ck.resolve_checkpoint(directory).name == "step-00000001"


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        ck.resolve_checkpoint(tmp_path / "missing")


def test_run_folder_resolves_to_its_checkpoints(tmp_path, small_config):
    _save(tmp_path / "checkpoints", 4, small_config)
    assert ck.resolve_checkpoint(tmp_path).name == "step-00000004"


class _Exploit:
    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_trainer_state_is_refused(tmp_path, small_config):
    path = _save(tmp_path / "ckpts", 1, small_config)
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    # torch.save's zip format with a code-running object inside (what an attacker would ship).
    torch.save({"step": 1, "evil": _Exploit()}, path / "trainer_state.pt", pickle_module=pickle)
    manifest = json.loads((path / "manifest.json").read_text())
    size = (path / "trainer_state.pt").stat().st_size
    manifest["files"]["trainer_state.pt"] = {
        "size": size,
        "sha256": ck._sha256(path / "trainer_state.pt"),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        ck.load_trainer_state(path)
    assert not marker.exists()
    torch.load(path / "trainer_state.pt", weights_only=False)  # proof the payload is live
    assert marker.exists()


def test_same_step_saved_twice_replaces_it(tmp_path, small_config):
    directory = tmp_path / "ckpts"
    _save(directory, 3, small_config, 1.0)
    _save(directory, 3, small_config, 9.0)
    state, _ = ck.load_model_state(directory)
    assert float(state["emb.weight"][0, 0]) == 9.0
    assert [p.name for p in directory.iterdir()] == ["step-00000003"]
