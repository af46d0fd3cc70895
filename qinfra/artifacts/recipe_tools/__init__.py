"""Standalone scripts that recipes run inside the llm-compressor venv; they never import qinfra."""
