"""The embedder: turns images and text into vectors with ONNX-exported encoders."""
