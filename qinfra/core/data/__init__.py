"""Shipped data tables (GPU catalog, instance types, formats, model facts)."""

from pathlib import Path

# The tables ship as plain files beside this module, in a checkout and in an installed wheel
# alike; a path here spares every command importlib.resources (and zipfile, tempfile).
DATA_DIR = Path(__file__).resolve().parent
