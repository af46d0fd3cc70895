"""Shipped data tables (GPU catalog, instance types, formats)."""
