"""Placeholder for the `run` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(run: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("run is not implemented yet")
