"""Customer.io as a source: its signed reporting webhooks."""
