"""qinfra: a quantized LLM and its 16-bit baseline as infrastructure-as-code."""

__version__ = "0.1.0"
