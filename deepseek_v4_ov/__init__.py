"""DeepSeek-V4 ported to PyTorch, with export to OpenVINO."""

__version__ = "0.1.0"
