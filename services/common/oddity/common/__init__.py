"""Runtime shared by the Oddity services: server bootstrap, settings, logging,
metrics, errors, tensors and the model-bundle contract."""
