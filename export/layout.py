"""File names inside a model's version folder, shared by the builders and the runtime."""

BUILD_INFO = "build.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
TORCH_DIR = "hf"  # a Hugging Face-format folder: config.json + model.safetensors
SPLADE_STEM = "splade_projection"
SPLADE_VERSION = "splade-proj-v1"
FUSEMOE_STEM = "fusemoe"  # fusemoe.safetensors + fusemoe.manifest.json
