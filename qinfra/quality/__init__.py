"""Measuring what was deployed: the latency harness (`qinfra bench`), the plan held against the
engine's own accounting (allocation), and the quality gate. Imports artifacts, serving,
planning and core; deploy and cli import it, never the other way round."""
