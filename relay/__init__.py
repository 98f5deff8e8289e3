"""relay: a self-hosted, bidirectional event relay between Segment and Customer.io."""

__version__ = "0.1.0"
USER_AGENT = f"relay/{__version__}"
