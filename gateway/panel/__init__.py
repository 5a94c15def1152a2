"""The admin panel on the admin listener (:8813): Jinja2 pages with htmx, over the same services as the API."""

from gateway.panel.plugin import PanelPlugin

__all__ = ["PanelPlugin"]
