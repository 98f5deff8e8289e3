"""HTTP handlers that receive messages from Segment and Customer.io."""
