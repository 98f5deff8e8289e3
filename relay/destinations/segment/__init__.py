"""Segment as a destination: its Tracking API sink (/v1/batch)."""
