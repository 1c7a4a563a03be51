"""Helpers shared by the workbook's notebooks, tests and benchmarks.

Each piece of logic lives here once: names and locations (``names``, ``config``), the
Spark session (``spark``), the simulator, validation, features, training, streaming
inference and the online feature store.
"""

__version__ = "0.1.0"
