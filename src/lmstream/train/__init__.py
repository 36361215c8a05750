"""Training: build a run, the loop, checkpoints, metrics and evaluation.

Modules follow the pipeline: ``setup`` (build a Run from training.yaml, restore it on resume),
``fetch`` (a step's micro-batches), ``step`` (one optimizer step), ``loop`` (the loop),
``optim`` (parameter groups, optimizer, LR schedule as a pure function of the step), ``precision`` (fp32/bf16/fp16,
peaks), ``evaluate`` (validation loss over a fixed set), ``metrics`` (a Logger interface with
stdout, TensorBoard and JSONL writers), ``report`` (what a run says at start and end),
``checkpointer`` (the one owner of a run's checkpoints: when, where, format, rotation, best),
``checkpoint`` (the folder format: atomic save / verify / resolve / load), ``sharded`` (FSDP
checkpoints), ``background`` (checkpoint writes off the training thread), ``run_folder`` and
``folders`` (lock, lineage, abandoned state, folder removal), ``state`` (what a checkpoint
restores and the resume checks), ``signals`` (graceful stop) and ``faults`` (test hooks).
See docs/ARCHITECTURE.md for the whole map.
"""
