"""envmon's benchmark: `python -m bench` (see docs/benchmarks.md).

It starts what it measures on its own ports (a Mosquitto, a throwaway PostgreSQL database,
`envmon ingest` and `envmon api` processes), runs the stages, stops everything, prints a
table on stdout and writes the figures as JSON.
"""
