"""The AI Studio Fleet gateway: control plane, generation API and admin panel in one process."""

__version__ = "0.1.0"
