"""envmon: IoT environmental monitoring service.

`monitor.core` is the shared core (settings, database, tables, metric catalogue) that the
other packages import; `monitor.api` and `monitor.cli` sit on top and are imported by nothing.
"""

__version__ = "0.1.0"
