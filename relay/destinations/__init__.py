"""Destinations: one package per system (`customerio/`, `segment/`), each registered once in
`registry.py`; what they share is here too (the transport seam, the rate limiter, the
sender, and the outcome rules)."""
