"""Serving: a local stand-in for TF Serving's REST and gRPC APIs, and clients of either."""
