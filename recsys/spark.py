"""A SparkSession for the Spark engine, refused quickly when the set-up cannot work.

PySpark starts a JVM and, with a cluster master, connects to it; either can fail in ways
that otherwise hang for minutes (a standalone master that is not there is retried
forever) or die with a Java stack trace. :func:`spark_session` checks what can be checked
before starting (pyspark installed, a ``java`` executable, a reachable ``spark://`` or
``k8s://`` master) and raises :class:`~recsys.errors.ConfigError` naming the fix, so the
CLI exits 2 within seconds. Network timeouts are set short by default so that a master
that disappears later fails the job instead of stalling it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

#: settings applied unless the caller's ``conf`` names them
DEFAULT_CONF: dict[str, str] = {
    "spark.network.timeout": "60s",
    "spark.executor.heartbeatInterval": "10s",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
}
CONNECT_TIMEOUT_S = 5.0


def java_executable() -> str | None:
    """The ``java`` PySpark would start: ``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home:
        cand = os.path.join(home, "bin", "java")
        return cand if os.access(cand, os.X_OK) else None
    return shutil.which("java")


def _check_master(master: str) -> None:
    if master.startswith("local") or master in ("yarn",):
        return
    url = urlparse(master[len("k8s://"):] if master.startswith("k8s://") else master)
    if master.startswith("spark://"):
        hosts = [h.strip() for h in master[len("spark://"):].split(",")]
        targets = []
        for h in hosts:
            host, _, port = h.rpartition(":")
            targets.append((host or h, int(port or 7077)))
    elif url.hostname:
        targets = [(url.hostname, url.port or (443 if url.scheme == "https" else 80))]
    else:
        raise ConfigError(f"[engine] master {master!r} is not a Spark master URL; use local[*], spark://HOST:PORT, yarn or k8s://https://HOST:PORT")
    errors = []
    for host, port in targets:
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                return
        except OSError as e:
            errors.append(f"{host}:{port} ({e})")
    raise ConfigError(
        f"the Spark master {master} cannot be reached: {', '.join(errors)}. Start the master, fix [engine] master "
        "(or --spark-master), or use master = \"local[*]\" to run on this machine"
    )


def spark_session(master: str = "local[*]", conf: Mapping[str, Any] | None = None, app_name: str = "recsys") -> Any:
    """Get (or create) the SparkSession the Spark engine runs on.

    An active session (a notebook's, a test fixture's) is reused as it is, and under
    ``spark-submit`` the session takes the master and settings given there: ``master`` and
    ``conf`` apply only when this process starts Spark itself.

    Parameters
    ----------
    master : str
        ``local[*]``, ``local[N]``, ``spark://HOST:PORT``, ``yarn`` or ``k8s://...``.
    conf : mapping
        Extra Spark settings (``[engine.conf]`` in the config), over :data:`DEFAULT_CONF`.

    Raises
    ------
    ConfigError
        pyspark is not installed, no ``java`` is found, or the master does not answer.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("the Spark engine needs pyspark: pip install 'recsys[spark]' (pyspark==4.3.0)") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its JVM, master and conf rule
        return SparkSession.builder.appName(app_name).getOrCreate()
    if java_executable() is None:
        where = f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java" if os.environ.get("JAVA_HOME") else "no `java` on PATH"
        raise ConfigError(
            f"the Spark engine needs Java 17 or 21 ({where}): install a JDK (e.g. apt-get install openjdk-17-jre-headless) "
            "and put it on PATH or set JAVA_HOME; or build with the default engine (--engine polars)"
        )
    _check_master(master)
    builder = SparkSession.builder.master(master).appName(app_name)
    # local workers run the interpreter named by PYSPARK_PYTHON (pyspark reads only that,
    # default "python3"); the job layer sets it to its own interpreter (pipelines/cli.py), a
    # notebook or cluster sets its own: the library does not change the process environment
    for k, v in {**DEFAULT_CONF, **{str(k): str(v) for k, v in (conf or {}).items()}}.items():
        builder = builder.config(k, v)
    t0 = time.perf_counter()
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # JVM start failures surface as generic exceptions
        raise ConfigError(f"Spark could not start on master {master!r}: {str(e).splitlines()[0][:300]}; check Java and [engine] conf") from None
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines at interpreter exit hit closed streams
    log.info("Spark %s session on %s started in %.1fs", spark.version, master, time.perf_counter() - t0)
    return spark
