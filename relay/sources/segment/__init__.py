"""Segment as a source: the HTTP Tracking API, analytics.js and the Webhooks destination."""
