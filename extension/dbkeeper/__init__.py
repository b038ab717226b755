"""dbkeeper: a Lambda extension that owns the function's MySQL connection out-of-process."""

__version__ = "0.1.0"
