"""Batch prediction and explanation past one process: photo lists, Parquet results that resume, Ray Data."""

from psyattr.scale.inputs import list_inputs
from psyattr.scale.results import ResultsError, read_results

__all__ = ["ResultsError", "list_inputs", "read_results"]
