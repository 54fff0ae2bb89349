"""Data: ShapesEdit (procedural multi-turn edits), the JSONL real-data format, grain pipelines."""
