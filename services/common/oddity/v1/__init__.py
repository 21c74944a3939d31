"""Generated from protos/oddity/v1 by protos/generate.py; do not edit."""
