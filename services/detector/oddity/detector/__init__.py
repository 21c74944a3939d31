"""The detector: serves versioned ONNX anomaly models from a model repository.

Reason to change: none of its own (the package marker).
"""
