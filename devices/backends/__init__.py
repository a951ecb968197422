"""Runtime backends: each runs a model file on input tensors and returns its raw output, nothing more."""
