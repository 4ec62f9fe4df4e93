"""Defect 10 of issue 22: experiment and registered model names are validated.

Before: an experiment named ``..`` survived the artifact-folder sanitisation, so its
artifacts landed outside ``mlartifacts/``.
"""

from __future__ import annotations

import pytest

from recsys import tracking
from recsys.errors import ConfigError
from recsys.tracking import validate_name

BAD = ["..", ".", "", "   ", "a/b", "../escape", "a\\b", "tab\there", "nul\x00", "new\nline", " lead", "trail ",
       ".hidden", "quo'te", "x" * 201, None, 3]


@pytest.mark.parametrize("name", BAD)
def test_unsafe_names_are_config_errors_naming_the_fix(name):
    with pytest.raises(ConfigError, match="experiment name|must be a string"):
        validate_name(name)


@pytest.mark.parametrize("name", ["recsys-movielens", "recsys-..", "ALS v2", "a.b_c-d", "recsys-ml-latest-small"])
def test_ordinary_names_pass(name):
    assert validate_name(name) == name


def test_an_experiment_named_dotdot_is_refused_before_anything_is_written(tmp_path):
    uri = f"sqlite:///{tmp_path}/db/mlruns.db"
    with pytest.raises(ConfigError, match="'..' starts with '.'"):
        with tracking.start_run(uri, ".."):
            pass
    assert not (tmp_path / "db").exists()  # refused before the store was touched


def test_artifacts_of_an_allowed_dotted_name_stay_inside_mlartifacts(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    with tracking.start_run(uri, "recsys-.."):
        location = mlflow.get_artifact_uri()
    root = (tmp_path / "mlartifacts").resolve()
    path = location.removeprefix("file://")
    assert path.startswith(str(root) + "/") and "/../" not in path and not path.startswith(str(root) + "/..")


def test_the_dataset_experiment_name_is_validated():
    from pipelines.tracking_uri import experiment_name

    assert experiment_name("movielens") == "recsys-movielens"
    with pytest.raises(ConfigError, match="from the dataset name"):
        experiment_name("a/../../b")


def test_a_registered_model_name_with_a_slash_is_refused_before_logging(tmp_path):
    from recsys.serving.mlflow_model import log_retriever_model
    from serving_cases import small_bundle

    info = small_bundle(tmp_path, norm_ranged=False)
    with pytest.raises(ConfigError, match="registered model name"):
        log_retriever_model(info.path, registered_model_name="team/recsys")
