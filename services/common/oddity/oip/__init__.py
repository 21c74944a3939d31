"""Generated from protos/oddity/oip by protos/generate.py; do not edit."""
