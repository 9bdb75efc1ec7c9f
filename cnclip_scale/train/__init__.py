"""Training: config, loss, optimiser, the DeepSpeed engine wrapper and the loop (see ``loop.train``)."""
