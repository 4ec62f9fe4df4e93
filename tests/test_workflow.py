from recsys.workflow import Workflow, fingerprint_files


def test_unchanged_step_is_skipped_and_changed_input_reruns(tmp_path):
    calls = []
    out = tmp_path / "out.txt"

    def step():
        calls.append(1)
        out.write_text("x")
        return {"result_path": str(out)}

    wf = Workflow(tmp_path / "state")
    assert wf.run("a", {"cfg": 1}, step).ran
    assert not Workflow(tmp_path / "state").run("a", {"cfg": 1}, step).ran
    assert Workflow(tmp_path / "state").run("a", {"cfg": 2}, step).ran
    assert len(calls) == 2


def test_step_reruns_when_its_output_was_deleted(tmp_path):
    out = tmp_path / "o"

    def step():
        out.write_text("x")
        return {"o_path": str(out)}

    Workflow(tmp_path / "s").run("a", {}, step)
    out.unlink()
    assert Workflow(tmp_path / "s").run("a", {}, step).ran


def test_failed_step_leaves_no_record(tmp_path):
    wf = Workflow(tmp_path / "s")

    def boom():
        raise RuntimeError("killed")

    try:
        wf.run("a", {}, boom)
    except RuntimeError:
        pass
    assert wf.record("a") is None


def test_file_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "f"
    f.write_text("1")
    a = fingerprint_files([f])
    f.write_text("2")
    assert fingerprint_files([f]) != a
