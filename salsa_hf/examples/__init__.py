"""What the example scripts (``scripts/``) share, apart from the library: their arguments and
config files, GLUE's tasks and metrics, models that load offline, and the run summary with its
plot. ``import salsa_hf`` loads none of it."""
