"""Placeholder for the `rollback` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(rollback: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("rollback is not implemented yet")
