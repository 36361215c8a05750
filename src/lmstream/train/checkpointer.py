"""The one owner of a run's checkpoints: when to save, where, in which format (plain or
sharded), rotation and the best-by-validation-loss set. The loop calls :meth:`Checkpointer.after_step`
at each step boundary (and :meth:`Checkpointer.save_now` when it must stop); everything else
about checkpoints is decided here (torchtitan's ``CheckpointManager``, nanochat's
``checkpoint_manager``).

The folder format, atomic writes, verification and loading live in :mod:`lmstream.train.checkpoint`;
the FSDP format in :mod:`lmstream.train.sharded`; lineage-aware rotation in
:mod:`lmstream.train.run_folder`; background writes in :mod:`lmstream.train.background`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lmstream import distributed as dist
from lmstream.failures import is_write_failure
from lmstream.train import checkpoint as ckpt
from lmstream.train import run_folder
from lmstream.train.background import CheckpointWriter, snapshot
from lmstream.train.folders import remove_folder
from lmstream.train.mixture_metrics import mixture_of
from lmstream.train.state import capture_rng, load_optimizer_state, optimizer_state

# save(directory, extra manifest keys) -> the folder written: one step's checkpoint, in the
# run's format, written into any directory (the checkpoints folder or the best one).
Save = Callable[[Path, dict], Path]


def due(count: int, every: int | None) -> bool:
    """Whether an ``every_n_*`` setting fires at ``count`` (null: never)."""
    return every is not None and count > 0 and count % every == 0


class BestCheckpoints:
    """The ``max_keep`` checkpoints with the lowest validation loss, in one folder (each
    manifest holds its ``val_loss``; a mixture's also its per-source ``val_losses`` and the
    ``weights`` that averaged them).

    A resume may change a mixture's weights (``mixture_resume``); a best checkpoint's val_loss
    averaged with the old weights would then be compared with evaluations averaged with the new
    ones. So with ``weights`` (the run's, by source name) a best of other weights counts with its
    per-source losses re-weighted with the current ones: the val_loss the current run would
    log for it (the validation sets are the same, a changed source's being refused on resume).
    A best that lacks the loss of a source evaluated now (a source added since) cannot be
    compared: it no longer competes, and stays in the folder (the comparison restarts).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_keep: int,
        weights: dict[str, float] | None = None,
    ):
        self.directory, self.max_keep = Path(directory), max_keep
        self.weights = weights
        self.sources: tuple[str, ...] | None = None  # the sources the last evaluation had

    def entries(self) -> list[tuple[float, Path]]:
        """(val_loss, path) of the complete best checkpoints that compare with this run's
        evaluations, lowest first (ties: newer first)."""
        found = []
        for path in ckpt.complete_checkpoints(self.directory):
            manifest = ckpt.read_manifest(path)
            loss = self._comparable(manifest)
            if loss is not None:
                found.append((loss, -int(manifest["step"]), path))
        return [(loss, path) for loss, _, path in sorted(found)]

    def _comparable(self, manifest: dict) -> float | None:
        loss = manifest.get("val_loss")
        if not isinstance(loss, int | float):
            return None
        saved_weights, saved = manifest.get("weights"), manifest.get("val_losses")
        if self.weights is None or not isinstance(saved_weights, dict):
            return float(loss)  # one source, or written before weights were recorded
        if saved_weights == self.weights:
            return float(loss)
        names = self.sources if self.sources is not None else tuple(self.weights)
        if not isinstance(saved, dict) or any(n not in saved for n in names):
            return None
        total = math.fsum(self.weights.get(n, 0.0) for n in names)
        if total <= 0:
            return None
        return math.fsum(self.weights.get(n, 0.0) * saved[n] for n in names) / total

    def manifest_keys(self, val_loss: float, losses: dict[str, float] | None) -> dict:
        """What a best checkpoint's manifest records of its evaluation."""
        extra: dict = {"val_loss": val_loss}
        if self.weights is not None and losses:
            extra |= {"val_losses": dict(losses), "weights": dict(self.weights)}
        return extra

    def qualifies(self, val_loss: float, losses: dict[str, float] | None = None) -> bool:
        """Whether a checkpoint with ``val_loss`` (``losses``: per source) would be among the
        ``max_keep`` lowest."""
        if losses:
            self.sources = tuple(losses)
        kept = self.entries()
        return len(kept) < self.max_keep or val_loss < kept[self.max_keep - 1][0]

    def keep(
        self, val_loss: float, save: Save, saved: Path | None = None, extra: dict | None = None
    ) -> Path:
        """Add a checkpoint: hard links to ``saved`` (this step's regular checkpoint, just
        written) or else a fresh one through ``save``; then prune beyond ``max_keep``.
        ``extra``: its manifest keys (default: just ``val_loss``)."""
        extra = extra or {"val_loss": val_loss}
        path = (
            link_checkpoint(saved, self.directory, extra) if saved else save(self.directory, extra)
        )
        self.prune(keep=path)
        return path

    def prune(self, keep: Path | None = None) -> None:
        """Delete best checkpoints beyond the ``max_keep`` lowest losses, never ``keep``."""
        for _, path in self.entries()[self.max_keep :]:
            if keep is None or path.name != Path(keep).name:
                remove_folder(path)


def link_checkpoint(
    source: str | os.PathLike, directory: str | os.PathLike, extra_manifest: dict | None = None
) -> Path:
    """A copy of the complete checkpoint ``source`` in ``directory`` (same step), made of hard
    links to its files: the best set uses it when the step was just saved, instead of writing
    gigabytes a second time. Files are never modified in place (every save writes new ones), so
    sharing them is safe, and rotating ``source`` away leaves the links' data intact. Across
    filesystems (no hard links) the files are copied. Atomic like a save."""
    source = Path(source)
    manifest = ckpt.read_manifest(source)
    step = int(manifest["step"])
    final, tmp = ckpt.begin_checkpoint(directory, step)
    try:
        for name in manifest["files"]:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / name, target)
            except OSError:  # another filesystem, or links not supported: copy instead
                shutil.copyfile(source / name, target)
        # The source's own keys (e.g. a sharded checkpoint's format and world_size) carry over.
        extra = {k: v for k, v in manifest.items() if k not in ("step", "files")}
        extra |= extra_manifest or {}
        return ckpt.finish_checkpoint(tmp, final, step, extra, known_files=manifest["files"])
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        raise ckpt.write_failed(tmp, final, exc) from None


class Checkpointer:
    """A training run's checkpoints (see the module docstring). ``logger`` receives the
    messages of finished writes and gives the trackers' state saved with each checkpoint;
    ``extra_state``: more trainer-state entries the loop decided (e.g. its micro-batch cut)."""

    def __init__(self, run, logger, extra_state: dict | None = None):
        self.run, self.logger, self.extra_state = run, logger, dict(extra_state or {})
        self.settings = run.cfg.runtime.checkpoint
        best = run.cfg.runtime.evaluation.best
        mixture = mixture_of(run.loader)
        weights = dict(zip(*mixture, strict=True)) if mixture else None
        self.best = BestCheckpoints(best.directory, best.max_keep, weights)
        self._best_losses: dict[str, float] | None = None  # the evaluation's, per source
        # FSDP: every rank writes its shards (collective, so synchronous); otherwise rank 0
        # writes one file set, in the background when runtime.checkpoint.async_save.
        self.sharded = run.strategy == "fsdp"
        self.writer = CheckpointWriter(background=self.settings.async_save and not self.sharded)
        self._parent = run.lineage_parent  # the checkpoint the next one continues from
        self._start = run.state.step  # 0, or the step resumed from (already on disk)
        self.saved_step: int | None = None

    @property
    def last_step(self) -> int:
        """The step of the newest checkpoint of this lineage (the one a resume would load)."""
        return self.saved_step if self.saved_step is not None else self._start

    def after_step(
        self,
        *,
        final: bool,
        epoch_ended: bool,
        stopping: bool,
        val_loss: float | None,
        source_losses: dict[str, float] | None = None,
    ) -> None:
        """Save when due and keep the best. ``final`` and ``stopping`` (a signal) force a save;
        an epoch's end (``epoch_ended``, after its last step) applies only the per-epoch
        setting; ``val_loss`` is this step's evaluation, if one ran (``source_losses``: a
        mixture's val_loss per source)."""
        st, ck = self.run.state, self.settings
        want = final or stopping or (not epoch_ended and due(st.step, ck.every_n_steps))
        want |= epoch_ended and due(st.epoch, ck.every_n_epochs)
        # A step comes here again at its epoch's end and when the run ends by epochs: a step
        # already saved is not saved again.
        want &= self.saved_step != st.step
        keep_best = False
        if val_loss is not None and math.isfinite(val_loss):
            self._report(self.writer.wait())  # earlier writes settled before best is judged
            main = self.run.env.is_main
            keep = main and self.best.qualifies(val_loss, source_losses)
            self._best_losses = source_losses
            keep_best = bool(dist.broadcast_object(keep if main else None))
        if want or keep_best:
            self._write(want, val_loss if keep_best else None)
            if stopping:  # written within the grace period, reported before the stop message
                self._report(self.writer.wait())
        if want:
            self.saved_step = st.step

    def save_now(self, pending: list | None = None, data_state: dict | None = None) -> None:
        """A checkpoint now (no best bookkeeping), written before returning. ``pending``: this
        rank's micro-batches taken for a step not yet done; ``data_state``: this rank's loader
        position to save instead of the current one."""
        self._write(True, None, pending, data_state)
        self._report(self.writer.wait())
        self.saved_step = self.run.state.step

    def poll(self) -> None:
        """Report a background write that has finished (or raise its error)."""
        self._report(self.writer.poll())

    def close(self) -> None:
        """The write still in progress lands (or raises) before the run ends."""
        self._report(self.writer.close())

    # ------------------------------------------------------------------------------ writing
    def _write(
        self,
        save: bool,
        best_val: float | None,
        pending: list | None = None,
        data_state: dict | None = None,
    ) -> None:
        """The checkpoint of this step (``save``) and/or its best copy (``best_val``)."""
        run, step = self.run, self.run.state.step
        if self.sharded:  # collective: every rank writes its shards, now
            from lmstream.train.sharded import save_sharded_checkpoint

            trainer = self._trainer_state(pending, data_state)

            def write(directory: Path, extra: dict) -> Path:
                return save_sharded_checkpoint(
                    directory, step, run.model, run.optimizer, run.cfg, trainer,
                    world_size=run.env.world_size, extra_manifest=extra,
                )  # fmt: skip

            self._report(self._save_and_keep(write, save, best_val, run.env.is_main))
            return
        # Plain: every rank joins the snapshot (RNG and data positions are gathered), rank 0
        # writes it, in the background when asked.
        model_state = dist.full_model_state_dict(run.model)  # fresh host copies
        trainer = self._trainer_state(pending, data_state)
        trainer["optimizer"] = optimizer_state(run.model, run.optimizer)
        if not run.env.is_main:
            return
        if self.writer.background:  # the training thread goes on changing the live tensors
            trainer = snapshot(trainer, clone_host_tensors=run.env.device.type == "cpu")

        def write(directory: Path, extra: dict) -> Path:
            return ckpt.save_checkpoint(
                directory, step, model_state, run.cfg, trainer, extra_manifest=extra
            )

        self._report(self.writer.submit(lambda: self._save_and_keep(write, save, best_val, True)))

    def _save_and_keep(self, write: Save, save: bool, best_val: float | None, main: bool) -> list:
        """The checkpoint (then rotation) and the best copy (then pruning) of one step; the
        folder operations on the main rank only. Returns the messages for the run's log."""
        messages, path = [], None
        if save:
            path = write(Path(self.settings.directory), {"parent": self._parent})
            self._parent = path.name
            if main:
                run_folder.rotate_lineage(path, self.settings.max_keep)
            messages.append(f"saved checkpoint {path}")
        if best_val is not None:
            extra = self.best.manifest_keys(best_val, self._best_losses)
            if main:
                best_path = self.best.keep(best_val, write, saved=path, extra=extra)
            else:  # a sharded save is collective: every rank joins it, rank 0 links and prunes
                best_path = path or write(self.best.directory, extra)
            messages.append(f"best checkpoint {best_path} (val_loss {best_val:.4f})")
        return messages

    def _trainer_state(self, pending: list | None, data_state: dict | None) -> dict:
        """Everything but the weights and optimizer; collective (each rank's RNG and data
        position are gathered: one entry per rank), so every rank calls it."""
        run = self.run
        extra = {"pending": dist.gather_objects(pending)} if pending is not None else {}
        return extra | {
            "state": run.state.to_dict(),
            "scaler": run.precision.scaler.state_dict() if run.precision.scaler else None,
            "rng": dist.gather_objects(capture_rng()),
            "data": dist.gather_objects(data_state or run.loader.state_dict()),
            "world_size": run.env.world_size,
            "total_steps": run.total_steps,
            "trackers": self.logger.state_dict(),  # rank 0's W&B run id, for --resume
            "data_source": run.data_source,
            # Every checkpoint holds them: what a resume from it reads, whichever is resumed.
            "data_commits": [pin.record() for pin in run.data_commits if pin.commit],
            "data_contents": run.data_contents,  # what a resume compares the data with
            **self.extra_state,
        }

    def _report(self, messages: list[str]) -> None:
        for text in messages:
            self.logger.message(text)


def restore_weights(path: Path, model, optimizer, trainer: dict) -> None:
    """Load a checkpoint's model and optimizer into a (wrapped or sharded) model, from either
    format: sharded checkpoints are resharded by DCP onto this run's ranks (collective), plain
    ones are loaded on every rank from the one file set."""
    if ckpt.is_sharded(path):
        from lmstream.train.sharded import load_sharded_checkpoint

        load_sharded_checkpoint(path, model, optimizer)
        return
    model_state, _ = ckpt.load_model_state(path)
    dist.load_full_model_state_dict(model, model_state)
    load_optimizer_state(model, optimizer, trainer["optimizer"])
