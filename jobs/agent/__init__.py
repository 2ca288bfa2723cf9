"""The continuous agent: runtime, rounds, target sources, sharding, state, metrics, HTTP server."""
