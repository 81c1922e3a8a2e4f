"""The HTTP API (FastAPI) under /v1. Imported by nothing but the CLI."""
