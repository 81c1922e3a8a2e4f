"""Simulated field devices: dust monitors, water-quality probes and leak meters, their demo
fleet with injectable episodes, and a bounded MQTT publisher that speaks `ingest.contract`."""
