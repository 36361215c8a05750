"""A torchrun job for test_epochs.py: each rank drives its real training loader (sync_passes)
with the training loop's protocol over real gloo collectives (every rank takes its step's
micro-batches; when every rank's are idle, all call end_pass), and writes the document ids it
trained per epoch as JSON. Usage: trace_job.py TRAINING_YAML EPOCHS OUT_DIR."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.*

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tests.support.doc_trace import ids_of, real_tokens  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from lmstream.config import load_training_config  # noqa: E402
from lmstream.data.loader import build_train_loader  # noqa: E402


def main(config: str, epochs: int, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_training_config(config)
    tok = Tokenizer.from_file(str(cfg.tokenizer.tokenizer_json))
    loader = build_train_loader(
        cfg, tok, Path(config).parent, rank=rank, world_size=world, sync_passes=True
    )
    streams: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    it, epoch, steps = iter(loader), 0, 0
    while epoch < epochs:
        micro = []
        for _ in range(cfg.data.gradient_accumulation_steps):
            micro.append(batch := next(it))
            assert batch.epoch == epoch, "a rank ran ahead into the next epoch"
            if batch.weight > 0:
                streams[(epoch, loader.last_worker)].append(real_tokens(batch))
        busy = torch.tensor([float(any(b.weight > 0 for b in micro))])
        dist.all_reduce(busy, op=dist.ReduceOp.MAX)
        steps += 1
        if not busy.item():
            loader.end_pass()
            epoch += 1
    trained: dict[int, list[int]] = defaultdict(list)
    for (e, _worker), parts in streams.items():
        trained[e] += ids_of(np.concatenate(parts), tok)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"steps": steps, "trained": trained}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
