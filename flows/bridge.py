"""Deployment entry point ``flows/bridge.py:bridge_flow`` (see ``deploy/prefect.yaml``); the
flow lives in :mod:`batchml.flows.bridge`."""

from batchml.flows.bridge import bridge_flow, bridge_once

__all__ = ["bridge_flow", "bridge_once"]
