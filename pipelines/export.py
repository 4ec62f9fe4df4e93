"""Placeholder for the `export` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(export: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("export is not implemented yet")
