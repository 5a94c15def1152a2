"""The gateway's database: models, engine and migrations at start."""

from gateway.db.engine import create_db_engine, create_sessionmaker
from gateway.db.models import Base, FleetMarker, Instance, InstanceEvent, Task

__all__ = ["Base", "FleetMarker", "Instance", "InstanceEvent", "Task", "create_db_engine", "create_sessionmaker"]
