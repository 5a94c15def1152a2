"""The instance service: one Chromium driving Google AI Studio, served over HTTP on :8000."""

__version__ = "0.1.0"
