"""HTTP clients for destinations: Customer.io's Track API and Segment's Tracking API."""
