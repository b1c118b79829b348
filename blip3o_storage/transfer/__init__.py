"""Preparation and transfer: safe tar extraction, data.json building, tree walking, upload planning,
upload and verify."""
