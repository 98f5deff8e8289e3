"""Customer.io as a destination: its Track API sink (v1 calls, v2 batches)."""
