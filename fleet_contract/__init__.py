"""The contract between the gateway and the instance: the one place both sides read it from.

What crosses the boundary lives here, and nothing else: the Structs of every instance endpoint
(`messages`), the error codes (`codes`), the instance's environment (`environment`), the model catalogue
(`catalogue`, data in models.json), the selectors file and the override's shape check (`selectors`), and the
proxy URL grammar (`proxy`). msgspec and the standard library only: the gateway installs it without
Playwright, the instance without the database.
"""

__all__ = ["catalogue", "codes", "environment", "messages", "proxy", "selectors"]
