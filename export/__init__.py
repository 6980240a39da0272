"""Registry, model builders, ONNX export and model-repository generation."""
