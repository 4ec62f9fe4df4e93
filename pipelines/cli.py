"""The ``recsys`` command: one sub-command per batch job.

Each job module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Heavy imports (torch, mlflow) happen inside ``main`` so that
``recsys --help`` stays fast.

Exit codes (stable; schedulers branch on them):

====  ==========================================================
0     success (including "nothing to do")
1     internal failure (a bug or an environment problem)
2     bad input or configuration (fix the data or the flags)
3     a quality gate refused to publish (old champion keeps serving)
4     another run holds the lock on the output directory
====  ==========================================================
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

from recsys.errors import ConfigError, InputError, LockError, QualityGateError, RecsysError, TrackingError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE = 3
EXIT_LOCKED = 4

COMMANDS = {
    "build-dataset": "pipelines.build_dataset",
    "train": "pipelines.train",
    "embed-content": "pipelines.embed_content",
    "export": "pipelines.export",
    "run": "pipelines.run",
    "rollback": "pipelines.rollback",
    "update": "pipelines.update",
    "config": "pipelines.config_cmd",
    "recommend-batch": "pipelines.recommend_batch",
}

log = logging.getLogger("recsys.cli")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr, as text for people or JSON lines for log collectors."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "mlflow", "urllib3", "sentence_transformers", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


PLUGINS_ENV = "RECSYS_PLUGINS"


def load_plugins(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Import the plug-in modules named by ``--plugin`` and ``$RECSYS_PLUGINS`` (comma-separated).

    A plug-in registers model families (:func:`recsys.models.registry.register`) or index
    backends when imported; this runs before the parser is built, so their names are valid
    ``--model`` choices and config sections.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv) if argv is not None else sys.argv[1:])
    env = (environ if environ is not None else os.environ).get(PLUGINS_ENV, "")
    names = [n.strip() for n in [*env.split(","), *known.plugin] if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plug-in module {name!r} cannot be imported ({e}); check --plugin / "
                              f"${PLUGINS_ENV} and that the module is on PYTHONPATH") from e
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers model families or index backends); repeatable; "
                             f"also ${PLUGINS_ENV}=mod1,mod2")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    if isinstance(exc, QualityGateError):
        return EXIT_GATE
    if isinstance(exc, LockError):
        return EXIT_LOCKED
    if isinstance(exc, (InputError, FileNotFoundError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, TrackingError):
        return EXIT_INTERNAL
    return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    try:
        load_plugins(argv)
    except ConfigError as e:
        setup_logging()
        log.error("%s: %s", type(e).__name__, e)
        return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    # Spark's local workers (--engine spark, spark-als) run PYSPARK_PYTHON: this interpreter,
    # which has recsys installed, unless the environment names another
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        return int(args._module.main(args) or 0)
    except RecsysError as e:
        log.error("%s: %s", type(e).__name__, e)
        return exit_code_for(e)
    except FileNotFoundError as e:
        log.error("file not found: %s", e)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:  # noqa: BLE001 - the last line of defence of a batch job
        log.exception("internal failure")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
