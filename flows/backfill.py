"""Deployment entry point ``flows/backfill.py:backfill_flow`` (see ``deploy/prefect.yaml``); the
flow lives in :mod:`batchml.flows.backfill`."""

from batchml.flows.backfill import backfill_flow

__all__ = ["backfill_flow"]
