"""The detector: serves versioned ONNX anomaly models from a model repository."""
