"""qinfra's router: the front door that splits traffic between the baseline and quantized variants
by sticky, weighted, monotonic cohorts, measures both, and mirrors a share for comparison.

Run it as `python -m qinfra.serving.router --config FILE --port N`; `assign` holds the pure rule.
"""
