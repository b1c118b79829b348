"""Integrations: mmengine's fileio backend, the drop-in for the closed petrel client and its import shim."""
