"""The training loop: one optimizer step over accumulated micro-batches, logging, evaluation,
checkpoints, and a graceful stop.

The loop always ends with an evaluation and a checkpoint (nanochat's ``last_step`` pattern), and
a SIGTERM/SIGINT checkpoints at the next step boundary, and a data source that fails beyond its
retries checkpoints the steps done since the last save (with the micro-batches the unfinished
step had already taken) before the run stops. Checkpoints happen only at optimizer-step
boundaries, so no half-accumulated gradient has to be saved (docs/ARCHITECTURE.md, decision 3).
The only host syncs per step are the ranks' agreement on flags, the step's token count (with
several ranks) and the one-bit non-finite check (the skip must be decided on the host); losses
and norms cross to the host only at log steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lmstream import distributed as dist
from lmstream.errors import DataSourceError, LmstreamError
from lmstream.train import faults, micro_batch
from lmstream.train.checkpointer import Checkpointer, due
from lmstream.train.evaluate import evaluate
from lmstream.train.fetch import StepFetcher
from lmstream.train.metrics import Logger
from lmstream.train.mixture_metrics import (
    add_source_tokens,
    evaluate_sources,
    mixture_of,
    source_metrics,
)
from lmstream.train.precision import matmul_kind, memory_gb, peak_flops
from lmstream.train.setup import Run, ends_by_epochs
from lmstream.train.signals import StopRequest
from lmstream.train.spike_guard import SpikeGuard
from lmstream.train.step import forward_backward, optimizer_step


class NonFiniteLossError(LmstreamError):
    """Too many consecutive non-finite losses: the run stops, its last good checkpoint kept."""

    exit_code = 5


@dataclass
class _Clock:
    """Throughput between log steps. Evaluation and checkpoint time (``paused``) is left out of
    tokens/s and logged on its own: counted in, the step after each evaluation reported a
    tenth of the real training throughput (issue #22)."""

    start: float
    tokens: int = 0  # real tokens (padding and idle micro-batches excluded), all ranks
    data_wait: float = 0.0
    paused: float = 0.0

    def training_seconds(self) -> float:
        return max(time.perf_counter() - self.start - self.paused, 1e-9)


class Trainer:
    """Runs :class:`Run` to total_steps (or total_epochs), or until a stop signal."""

    def __init__(
        self,
        run: Run,
        logger: Logger,
        resume_command: str = "lmstream train --config RUN_DIR/training.yaml --resume",
    ):
        self.run = run
        self.resume_command = resume_command  # named in stop messages: what to type next
        self.cfg = run.cfg
        self.logger = logger
        self.device = run.env.device
        rt = self.cfg.runtime
        kind = matmul_kind(rt.precision, self.device.type, rt.tf32)
        self.peak = peak_flops(self.device, rt.peak_tflops, kind)  # of the precision in use
        self.fetcher = StepFetcher(run)
        self.mixture = mixture_of(run.loader)  # (names, weights) of a mixture's sources
        self.by_epochs = ends_by_epochs(self.cfg, run.loader)  # not at total_steps
        # runtime.micro_batch: how each step's rows are cut (train/micro_batch.py).
        self.micro_batch = micro_batch.resolve(run, logger.message, forward_backward)
        self._source_losses: dict[str, float] = {}  # the last evaluation's, per source
        self._start = run.state.step  # 0, or the step resumed from (already on disk)
        guard = self.cfg.runtime.spike_guard
        self.guard = SpikeGuard(guard, run.state) if guard is not None else None
        self._aux: dict = {}  # the last step's z-loss part, for the log
        # When, where, which format, rotation, best; the micro-batch cut is saved with each.
        self.checkpoints = Checkpointer(run, logger, {"micro_batch": self.micro_batch})

    # ---------------------------------------------------------------------------- the loop
    def fit(self) -> int:
        if self.by_epochs and self.run.state.epoch >= self.cfg.scheduler.total_epochs:
            self.logger.message(
                f"nothing to do: the run is finished (epoch {self.run.state.epoch} of "
                f"{self.cfg.scheduler.total_epochs}); raise scheduler.total_epochs to train further"
            )
            return 0
        by_steps = not self.by_epochs and self.run.resumed_from is not None
        if by_steps and self._start >= self.run.total_steps:
            self.logger.message(
                f"nothing to do: the run is finished (step {self._start} of {self.run.total_steps}"
                "); raise scheduler.total_steps to train further"
            )
            return 0
        try:
            result = self._fit()
        except BaseException as err:
            # The clean-up must not replace the error that ended the run: a second one (e.g.
            # the checkpoint still being written failed too) is reported beside it.
            try:
                self._close()
            except Exception as second:
                self.logger.message(f"while stopping after the error below: {second}")
            raise err
        self._close()
        return result

    def _close(self) -> None:
        """A checkpoint still being written lands before the run ends, however it ends; the
        loader's workers are stopped (they ignore stop signals: the rank ends them)."""
        try:
            self.checkpoints.close()
        finally:
            self.run.loader.close()

    def _fit(self) -> int:
        run, rt, st = self.run, self.cfg.runtime, self.run.state
        accum = self.cfg.data.gradient_accumulation_steps
        total_epochs = self.cfg.scheduler.total_epochs
        tokens_per_step = self.cfg.tokens_per_step(run.env.world_size)
        run.model.train()
        clock = _Clock(time.perf_counter())
        with StopRequest() as stop:
            while st.step < run.total_steps or self.by_epochs:
                # The loader's position before the fetch: what a stop that cuts it short saves.
                position = self.fetcher.position()
                fetched = time.perf_counter()
                micro, failure, cut = self.fetcher.fetch(accum, stop)
                clock.data_wait += time.perf_counter() - fetched
                # Ranks agree on the epoch (their streams roll over at different batches), on
                # a stop signal (it reaches them at different moments), on a failed source, on
                # a fetch cut short by a signal and on whether any rank still has data this
                # pass: all then take the same branches below, so no rank waits in a collective
                # that its peers skip.
                epoch, stopping, failed, busy, cut, inexact, partial = dist.agree_max(
                    [
                        max((b.epoch for b in micro), default=0),
                        stop.requested,
                        failure is not None,
                        any(b.weight > 0 for b in micro),
                        cut,
                        position is None,
                        any(b.tokens < b.targets.numel() for b in micro),
                    ],
                    self.device,
                )
                if failed:
                    self._save_after_source_failure(micro, failure)
                if cut:  # this step is abandoned: every rank saves the last finished one
                    return self._save_after_stop(stop, None if inexact else position)
                epoch, stopping = int(epoch), bool(stopping)
                if not busy:  # every rank has used up its part: the epoch is complete
                    run.loader.end_pass()
                    st.epoch = epoch + 1
                    if total_epochs is not None and st.epoch >= total_epochs:
                        break
                    paused = time.perf_counter()  # out of tokens/s, as after a step
                    self._after_step(False, True)  # every_n_epochs: at the epoch's end
                    clock.paused += time.perf_counter() - paused
                    continue
                if total_epochs is not None and epoch >= total_epochs:
                    break  # the stream rolled into an epoch past the last one asked for
                rows = micro_batch.regroup(micro, self.micro_batch)
                loss = forward_backward(
                    run.model, rows, run.precision, self.device,
                    self.cfg.optimizer.z_loss, self._aux,
                )  # fmt: skip
                # Fault-injection hooks for tests/reliability (inert unless their env var is set).
                loss = faults.nonfinite_loss(loss, st.micro_batches_seen // accum + 1)
                loss = faults.spike_loss(loss, st.micro_batches_seen // accum + 1)
                lr = run.schedule(st.step)
                grad_norm, ok = optimizer_step(
                    run.model,
                    run.optimizer,
                    run.precision,
                    loss,
                    lr,
                    self.cfg.optimizer.max_grad_norm,
                    self.guard,
                )
                st.micro_batches_seen += accum
                # A pass's last steps hold padding and idle micro-batches: count real tokens
                # (one more collective, only at those steps, which every rank sees as partial).
                real = tokens_per_step
                if partial:
                    local = torch.tensor([sum(b.tokens for b in micro)], dtype=torch.float64)
                    real = int(dist.all_reduce_sum(local.to(self.device)).item())
                st.tokens_seen += real
                clock.tokens += real
                if self.mixture:
                    add_source_tokens(st, micro, self.mixture[0], self.device)
                if not ok and self.guard is not None and self.guard.last_reason:
                    st.skipped_steps += 1
                    self.logger.message(
                        f"step {st.step + 1}: {self.guard.last_reason}; update skipped "
                        f"({st.skipped_steps} skipped in total)"
                    )
                    continue
                if not ok:
                    self._on_nonfinite(loss)
                    continue
                st.nonfinite_streak = 0
                st.step += 1
                epoch_ended = epoch > st.epoch
                st.epoch = epoch
                last = st.step >= run.total_steps and not self.by_epochs
                if st.step % rt.log_every_n_steps == 0 or last:
                    self._log(loss, grad_norm, lr, clock)
                    clock = _Clock(time.perf_counter())
                self.logger.advance(st.step)
                paused = time.perf_counter()
                self._after_step(last, epoch_ended, stopping=stopping)
                self.checkpoints.poll()  # a background write's result (or error)
                clock.paused += time.perf_counter() - paused
                if stopping:
                    self.logger.message(
                        f"stopped by {stop.name or 'a signal to another rank'} at step {st.step}; "
                        f"checkpoint saved in {rt.checkpoint.directory}. "
                        f"Continue with `{self.resume_command}`"
                    )
                    return 0
        self._after_step(True, False)  # ended by epochs (or nothing to do): final eval and save
        return 0

    def _save_after_stop(self, stop: StopRequest, position: dict | None) -> int:
        """A stop signal cut a fetch short on some rank: the unfinished step is dropped and
        every rank saves the last finished one, with the loader's position from before the
        fetch (so a resume reads the dropped micro-batches again, exactly as an uninterrupted
        run would), unless that step is already saved. ``position`` is None on every rank when
        some rank still held batches read before its start (a resume's first steps): no
        position would then be exact, and the run's last checkpoint is where it continues."""
        st, last = self.run.state, self.checkpoints.last_step
        if st.step > last and position is not None:
            self.checkpoints.save_now(data_state=position)
            saved = "checkpoint saved"
        elif st.step > last:
            saved = f"not saved (batches read before the start were still queued); resume from step {last}"
        else:
            saved = f"no step since the checkpoint at step {st.step}"
        self.logger.message(
            f"stopped by {stop.name or 'a signal to another rank'} while waiting for data, at "
            f"step {st.step}; {saved} (in {self.cfg.runtime.checkpoint.directory}). "
            f"Continue with `{self.resume_command}`"
        )
        return 0

    def _save_after_source_failure(self, fetched: list, failure: DataSourceError | None) -> None:
        """A source failed beyond its retries (on this rank or another): keep the steps done
        since the last checkpoint, then stop. The micro-batches this step already took from the
        loader go into the checkpoint (``pending``), so a resume feeds them first and continues
        exactly as an uninterrupted run (the loader's saved position is after them)."""
        st = self.run.state
        if st.step > self.checkpoints.last_step:
            # A mixture's also keep their tokens per source (tokens_seen/NAME when replayed).
            pending = [(b.inputs, b.targets, b.epoch, *_per_source(b)) for b in fetched
                       if b.weight > 0]  # fmt: skip
            try:
                self.checkpoints.save_now(pending)
                saved = f"; checkpoint saved at step {st.step}"
            except LmstreamError as err:  # e.g. the disk is full too: say both
                saved = f"; the checkpoint at step {st.step} failed too: {err}"
        else:
            saved = f"; no step since the checkpoint at step {st.step}"
        if failure is not None:  # the source's line says what failed; this one what to do next
            raise type(failure)(
                f"{failure}{saved}; once it answers, continue with `{self.resume_command}`"
            ) from None
        raise DataSourceError(
            f"another rank's data source failed (its message says which){saved}; fix the "
            f"source and continue with `{self.resume_command}`"
        )

    def _on_nonfinite(self, loss: torch.Tensor) -> None:
        """A skipped update: a non-finite loss, or non-finite gradients (under fp16 the
        GradScaler's overflow). It is not a step: ``step`` and the schedule stay where they are
        (the next attempt reuses this learning rate), only the data moves on."""
        st, limit = self.run.state, self.cfg.runtime.max_nonfinite_steps
        st.skipped_steps += 1
        value, scaler = loss.item(), self.run.precision.scaler
        what = f"non-finite loss ({value})" if not math.isfinite(value) else "non-finite gradients"
        # An fp16 overflow at a loss scale above 1 is the GradScaler still searching for its
        # scale (the first attempts of most fp16 runs): a skipped update, but not a sign that
        # training is broken, so it does not count toward max_nonfinite_steps. Gradients that
        # overflow at a scale of 1 or less overflow unscaled, which lowering cannot fix.
        searching = math.isfinite(value) and scaler is not None and scaler.get_scale() >= 1.0
        if math.isfinite(value) and scaler is not None:
            what = f"fp16 gradient overflow (loss scale lowered to {scaler.get_scale():g})"
        if not searching:
            st.nonfinite_streak += 1
        kind = "non-finite losses" if not math.isfinite(value) else f"skipped updates ({what})"
        self.logger.message(
            f"step {st.step + 1}: {what}; update skipped "
            f"({st.nonfinite_streak} in a row, {st.skipped_steps} in total)"
        )
        if st.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"{st.nonfinite_streak} consecutive {kind} (runtime.max_nonfinite_steps = "
                f"{limit}); stopped at step {st.step}, "
                "the last good checkpoint is kept. Lower the learning rate, or use fp32/bf16 "
                "instead of fp16, and resume"
            )

    # ---------------------------------------------------------------------------- logging
    def _log(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, clock: _Clock) -> None:
        st = self.run.state
        tokens_per_s = clock.tokens / clock.training_seconds()
        # The slowest rank's data wait and the largest rank's memory are what limit the job.
        worst = dist.all_reduce_max(
            torch.tensor([clock.data_wait, memory_gb(self.device)], dtype=torch.float64).to(
                self.device
            )
        ).tolist()
        metrics = {
            "loss": dist.all_reduce_mean(loss).item(),
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "tokens_per_s": tokens_per_s,
            "data_wait_s": worst[0],
            "eval_checkpoint_s": clock.paused,
            "memory_gb": worst[1],
            "tokens_seen": st.tokens_seen,
            "epoch": st.epoch,
            "skipped_steps": st.skipped_steps,
        }
        if self.mixture:
            metrics |= source_metrics(st, self.run.loader, self.mixture[0], self.device)
        if "z_loss" in self._aux:
            metrics["z_loss"] = dist.all_reduce_mean(self._aux["z_loss"]).item()
        if self.peak:
            per_rank = tokens_per_s / self.run.env.world_size
            metrics["mfu"] = self.run.flops_per_token * per_rank / self.peak
        self.logger.log(st.step, metrics)

    # ------------------------------------------------------------------- eval and checkpoints
    def _after_step(self, final: bool, epoch_ended: bool, stopping: bool = False) -> None:
        """Evaluate when due, then let the checkpointer save and keep the best; ``final``
        forces both, ``stopping`` (a signal) forces the checkpoint only, to stay within a pod's
        grace period. An epoch's end comes after its last step (``epoch_ended``): only the
        per-epoch settings apply."""
        ev, st = self.cfg.runtime.evaluation, self.run.state
        steps = not epoch_ended  # the per-step settings were applied at this step already
        want_eval = final or (steps and due(st.step, ev.every_n_steps))
        want_eval |= epoch_ended and due(st.epoch, ev.every_n_epochs)
        # A step comes here again at its epoch's end and when the run ends by epochs: the
        # final evaluation still runs if it was only saved, but is not redone.
        want_eval &= st.evaluated_step != st.step
        val = None
        if want_eval and not stopping:
            val, st.evaluated_step = self._evaluate(), st.step
        self.checkpoints.after_step(
            final=final, epoch_ended=epoch_ended, stopping=stopping, val_loss=val,
            source_losses=self._source_losses if val is not None else None,
        )  # fmt: skip
        if val is not None and math.isfinite(val):  # after the snapshot, as the state was saved
            st.best_val_loss = val if st.best_val_loss is None else min(val, st.best_val_loss)
        dist.barrier()

    def _evaluate(self) -> float:
        metrics: dict[str, float] = {}
        if self.run.val_batches and self.mixture:  # val_loss/NAME, val_loss their weighted mean
            metrics = evaluate_sources(self.run.model, self.run.val_batches, self.device,
                                       self.run.precision.autocast, *self.mixture)  # fmt: skip
        elif self.run.val_batches:
            metrics = evaluate(
                self.run.model, self.run.val_batches, self.device, self.run.precision.autocast
            )
        if self.cfg.runtime.evaluation.tasks:  # lm-evaluation-harness benchmarks, rank 0
            from lmstream.harness import evaluate_in_loop
            from lmstream.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(self.cfg.tokenizer.tokenizer_json)
            metrics.update(evaluate_in_loop(self.run, tokenizer))
        if metrics:
            self.logger.log(self.run.state.step, metrics)
        # a mixture's per-source losses: best/ re-weights them if a resume changes the weights
        self._source_losses = {
            k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val_loss/")
        }
        return metrics.get("val_loss", float("nan"))


def _per_source(batch) -> tuple:
    """A mixture batch's target tokens per source, as a pending entry's 4th item (else none)."""
    counts = getattr(batch, "source_tokens", ())
    return (list(counts),) if counts else ()
