"""The trainer: watches the data volume, trains per-group models, validates and publishes bundles.

Reason to change: none of its own (the package marker).
"""
