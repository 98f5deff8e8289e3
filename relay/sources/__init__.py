"""HTTP handlers that receive messages: Segment's Tracking API and webhooks, Customer.io webhooks."""
