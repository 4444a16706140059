"""Deployment entry point ``flows/pieces.py:score_large_file_flow``; the flow lives in
:mod:`batchml.flows.pieces`."""

from batchml.flows.pieces import score_large_file_flow

__all__ = ["score_large_file_flow"]
