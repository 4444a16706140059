"""Deployment entry point ``flows/train.py:train_flow`` (see ``deploy/prefect.yaml``); the
flow lives in :mod:`batchml.flows.train`."""

from batchml.flows.train import train_flow

__all__ = ["train_flow"]
