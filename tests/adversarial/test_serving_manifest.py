"""Defect 3 of issue 22: the bundle manifest is integrity-checked and schema-validated at load.

Before: one flipped bit in the key ``exact_range_max`` loaded silently (recall@100 1.00 ->
0.31), and ``"similarity": "cosine"`` loaded and changed every answer.
"""

from __future__ import annotations

import json
import logging

import pytest

from recsys.errors import BundleError
from recsys.serving.manifest import DIGEST
from recsys.serving.reader import verify_bundle
from recsys.serving.retriever import Retriever
from serving_cases import reseal, small_bundle


@pytest.fixture()
def bundle(tmp_path):
    info = small_bundle(tmp_path)
    assert info.manifest["index"]["ranges"]["exact_range_max"] >= 0  # the key of the reported case exists
    return info.path


def _edit(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m, indent=2))


def test_export_writes_the_manifest_digest_beside_it(bundle):
    line = (bundle / DIGEST).read_text()
    assert line.endswith("  manifest.json\n") and len(line.split()[0]) == 64
    assert (bundle / DIGEST).stat().st_mode & 0o777 == 0o644


def test_a_flipped_bit_in_a_manifest_key_is_refused(bundle):
    raw = bytearray((bundle / "manifest.json").read_bytes())
    pos = raw.index(b"exact_range_max") + len("exact_range_")
    raw[pos] ^= 0x01  # "max" -> "lax": the reported defect
    (bundle / "manifest.json").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="manifest.json fails its sha256 check"):
        Retriever.load(bundle)


@pytest.mark.parametrize("verify", [True, False])
def test_a_manifest_edited_to_cosine_is_refused_even_without_file_checksums(bundle, verify):
    _edit(bundle, lambda m: m.update(similarity="cosine"))
    with pytest.raises(BundleError, match="re-export the bundle or roll back"):
        Retriever.load(bundle, verify=verify)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(similarity="euclid"), "similarity must be one of"),
    (lambda m: m.update(n_items="1200"), "n_items must be an int > 0"),
    (lambda m: m.update(dim=8.0), "dim must be an int > 0"),
    (lambda m: m.update(exact_max_items=True), "exact_max_items must be an int >= 0"),
    (lambda m: m["index"]["ranges"].pop("exact_range_max"), "index.ranges.exact_range_max is missing"),
    (lambda m: m["index"]["ranges"].update(exact_range_lax=0), "unknown key"),
    (lambda m: m["index"].update(metric="euclidean"), "index.metric must be one of"),
    (lambda m: m["index"]["ranges"].update(bounds=[0, 5, 3, 1200]), "index.ranges.bounds must be"),
    (lambda m: m["foldin"].update(method="magic"), "foldin.method must be one of"),
    (lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}), "not a plain file name"),
    (lambda m: m["quality_gate"].update(recall=3), "quality_gate.recall must be a number in"),
    (lambda m: m.pop("similarity"), "similarity is missing"),
])
def test_a_resealed_manifest_with_wrong_values_fails_its_schema(bundle, edit, message):
    _edit(bundle, edit)
    reseal(bundle)  # digest matches: only the schema check stands in the way
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle, checksums=False)


def test_a_bundle_without_a_digest_loads_with_a_warning_and_is_still_schema_checked(bundle, caplog):
    (bundle / DIGEST).unlink()
    with caplog.at_level(logging.WARNING, logger="recsys.serving.manifest"):
        r = Retriever.load(bundle)
    assert r.recommend("u1", k=3)[0].shape == (3,)
    assert any("re-export it" in rec.getMessage() for rec in caplog.records)
    _edit(bundle, lambda m: m.update(similarity="manhattan"))
    with pytest.raises(BundleError, match="similarity must be one of"):
        Retriever.load(bundle)


@pytest.mark.parametrize("content", ["", "not a digest\n", "0" * 64 + "  other.json\n", b"\xff\xfe"])
def test_a_damaged_digest_file_is_refused(bundle, content):
    f = bundle / DIGEST
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BundleError, match="corrupted"):
        Retriever.load(bundle)


def test_a_manifest_that_is_not_json_is_refused(bundle):
    (bundle / "manifest.json").write_bytes(b"\xff{not json")
    reseal(bundle)
    with pytest.raises(BundleError, match="not valid JSON"):
        Retriever.load(bundle)


def test_every_file_of_the_bundle_with_one_flipped_byte_is_refused(bundle):
    """Held before the fix for the checksummed files; now for the manifest and its digest too."""
    names = [*json.loads((bundle / "manifest.json").read_text())["files"], "manifest.json", DIGEST]
    for name in names:
        f = bundle / name
        original = f.read_bytes()
        raw = bytearray(original)
        raw[len(raw) // 2] ^= 0x10
        f.write_bytes(bytes(raw))
        with pytest.raises(BundleError):
            Retriever.load(bundle)
        f.write_bytes(original)
    assert Retriever.load(bundle).n_items == 1200
