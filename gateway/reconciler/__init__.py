"""The reconciler: the only code that changes an instance's status, moving it toward its target."""

from gateway.reconciler.decide import Action, InstanceRow, decide
from gateway.reconciler.loop import PassReport, Reconciler

__all__ = ["Action", "InstanceRow", "PassReport", "Reconciler", "decide"]
