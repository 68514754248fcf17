"""Training: the training set, examples, Ray Data inputs, the Ray Train loop and the driver (``run``)."""
