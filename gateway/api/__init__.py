"""Routers of the public API, one module per concern; `create_app` includes each with a line."""
