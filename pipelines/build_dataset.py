"""Placeholder for the `build_dataset` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(build_dataset: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("build_dataset is not implemented yet")
