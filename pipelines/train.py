"""Placeholder for the `train` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(train: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("train is not implemented yet")
