"""Placeholder for the `embed_content` job; being implemented (see the issue tracker)."""

from __future__ import annotations

import argparse

HELP = "(embed_content: not implemented yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("embed_content is not implemented yet")
