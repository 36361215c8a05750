"""Training: optimizer and schedules, checkpoints, metrics, evaluation and the loop.

Modules follow the pipeline: ``optim`` (parameter groups, optimizer, LR schedule as a pure
function of the step), ``checkpoint`` (atomic save / rotate / best / resolve / load),
``metrics`` (a Logger interface with stdout, TensorBoard and JSONL writers), ``evaluate``
(validation loss over fixed batches), ``precision`` and ``signals`` (small helpers of the
loop), ``state`` (what a checkpoint restores) and ``loop`` (one train step, the loop).
"""
