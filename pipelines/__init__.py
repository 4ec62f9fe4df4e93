"""Batch job entry points: config file in, artifacts and an MLflow run out.

Each module here is a thin job over the library (``recsys``); it is the only place that
reads config files, environment variables or command-line flags.
"""
