"""The single-process side of lmstream.distributed and the sharded-checkpoint reader: error
tagging per rank, peer-failure messages, agreement helpers without a process group, and
consolidation refusing what it cannot read."""

from __future__ import annotations

import pytest
import torch

from lmstream import distributed as dist
from lmstream import failures
from lmstream.cli import main as cli_main
from lmstream.errors import CheckpointError, ConfigError
from lmstream.train import checkpoint as ckpt


def test_on_rank_tags_every_line_and_keeps_the_type():
    err = ConfigError(["a: bad", "b: worse"])
    tagged = failures.on_rank(err, dist.DistEnv(rank=1, world_size=2))
    assert isinstance(tagged, ConfigError) and tagged.exit_code == 2
    assert str(tagged).splitlines() == ["rank 1: a: bad", "rank 1: b: worse"]
    assert failures.on_rank(err, dist.DistEnv()) is err  # one process: unchanged


def test_peer_failure_is_one_clear_line():
    raw = RuntimeError(
        "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
        "[127.0.0.1]:29100: Connection reset by peer. This is typically caused by ..."
    )
    assert failures.is_peer_failure(raw)
    assert not failures.is_peer_failure(RuntimeError("shape mismatch"))
    text = str(failures.peer_failure_error(raw))
    assert text.startswith("most likely another rank stopped")  # no process group: no names
    assert (
        "a collective operation failed (Read error [127.0.0.1]:29100: Connection reset by peer)"
        in text
    )
    assert "\n" not in text and "--resume" in text


def test_agreement_helpers_without_a_process_group():
    cpu = torch.device("cpu")
    assert dist.agree_max([3, True], cpu) == [3, True]
    assert dist.all_reduce_max(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    assert torch.equal(dist.local_tensor(torch.tensor(2.0)), torch.tensor(2.0))


def test_sharded_checkpoint_without_shards_is_refused(tmp_path):
    folder = tmp_path / "step-00000001"
    (folder / ckpt.SHARDED_DIR).mkdir(parents=True)
    (folder / ckpt.MANIFEST_FILE).write_text('{"step": 1, "files": {}}')
    assert ckpt.is_sharded(folder)
    with pytest.raises(CheckpointError, match="unreadable shard metadata"):
        ckpt.load_model_state(folder)


def test_consolidate_leaves_a_plain_checkpoint_alone(tmp_path, capsys):
    folder = tmp_path / "step-00000001"
    folder.mkdir()
    (folder / ckpt.MODEL_FILE).write_bytes(b"")
    (folder / ckpt.MANIFEST_FILE).write_text(
        '{"step": 1, "files": {"model.safetensors": {"size": 0, "sha256": ""}}}'
    )
    assert cli_main(["consolidate", "--checkpoint", str(folder)]) == 0
    assert "already in the plain format" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_consolidate_refuses_a_damaged_sharded_checkpoint(tmp_path, small_config, capsys):
    """consolidate checks the manifest's sha256 sums as eval, generate and export do (issue
    #19): a shard with 4 KB overwritten (same size) is refused in one line naming the newest
    intact checkpoint; --no-verify reads it and says so."""
    from lmstream.model.transformer import Transformer
    from lmstream.train.sharded import save_sharded_checkpoint

    model = Transformer(small_config.model, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    folders = [
        save_sharded_checkpoint(tmp_path / "checkpoints", step, model, optimizer, small_config,
                                {"step": step}, world_size=1)
        for step in (1, 2)
    ]  # fmt: skip
    shard = max((folders[1] / ckpt.SHARDED_DIR).glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(bytes(4096))
    capsys.readouterr()
    assert cli_main(["consolidate", "--checkpoint", str(folders[1])]) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fails its sha256 check" in lines[0], lines
    assert f"the newest intact checkpoint there is {folders[0]}" in lines[0]
    assert not (tmp_path / "consolidated").exists()
    assert cli_main(["consolidate", "--checkpoint", str(folders[1]), "--no-verify"]) == 0
    assert "--no-verify" in capsys.readouterr().err
