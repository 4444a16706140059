"""Deployment entry point ``flows/predict.py:predict_flow`` (see ``deploy/prefect.yaml``); the
flows live in :mod:`batchml.flows.predict`."""

from batchml.flows.predict import make_batch_flow, predict_flow

__all__ = ["make_batch_flow", "predict_flow"]
