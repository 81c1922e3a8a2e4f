"""The shared core: settings, database engine, table definitions and the metric catalogue."""
