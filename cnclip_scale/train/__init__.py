"""Training (see ``loop.train``): config, the step (``step``), DeepSpeed around the model (``engine``), checkpoints and
resume (``checkpoint``, ``state``, ``rng``), validation, loss, optimiser, logs."""
