"""The trainer: watches the data volume, trains per-group models, validates and publishes bundles."""
