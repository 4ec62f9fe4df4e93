"""One local[2] SparkSession for every Spark test of a pytest session (a JVM start costs 10-25 s)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest


def require_spark() -> None:
    """Skip the calling module where pyspark or Java is missing, naming the fix."""
    pytest.importorskip("pyspark", reason="the Spark engine needs pyspark: pip install 'recsys[spark]'")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the Spark engine needs Java (apt-get install openjdk-17-jre-headless)", allow_module_level=True)


@pytest.fixture(scope="session")
def spark():
    from recsys.spark import spark_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers run this interpreter (as the CLI sets)
    session = spark_session("local[2]", {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"})
    yield session
    session.stop()
