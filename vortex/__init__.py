"""vortex: find where a vision model may be split without leaking its input."""

__version__ = "0.1.0"
