"""Defect 8 of issue 22: bytes that are not UTF-8 are an input error naming file, line and fix.

Before: one invalid byte in the events exited 1 with a polars traceback ("invalid utf-8
sequence", no file, no line) as soon as a time column was mapped. Now it exits 2 naming
the file, the line and the ``encoding`` option; with ``encoding = "utf8-lossy"`` the bad
byte is replaced and a row whose id it damaged is rejected (kept and counted).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from data_cases import cli_build, config

from recsys.data.build import build_dataset
from recsys.data.readers import InputSpec, find_invalid_utf8, read_items
from recsys.errors import ConfigError, InputError

T0 = 1_700_000_000


def _events(path: Path, bad_line: bytes, n: int = 3_000) -> Path:
    """``n`` good rows, then ``bad_line`` (so it is line ``n + 2`` of the file)."""
    rows = b"".join(b"%d,%d,%d\n" % (k % 50, k % 70, T0 + k) for k in range(n))
    path.write_bytes(b"u,i,t\n" + rows + bad_line)
    return path


def test_an_invalid_byte_exits_2_naming_the_file_the_line_and_the_encoding_option(tmp_path: Path, capsys) -> None:
    f = _events(tmp_path / "events.csv", b"7,\xff8,1700000000\n")
    code, err = cli_build(f, tmp_path / "ds", "--time-col", "t", capsys=capsys)
    assert code == 2  # was 1, with a traceback
    assert "Traceback" not in err
    assert "events.csv, line 3002" in err and "not valid UTF-8" in err and 'encoding = "utf8-lossy"' in err
    assert "--events-encoding" in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("where", ["id", "time", "header"])
def test_the_library_raises_an_input_error_wherever_the_byte_is(tmp_path: Path, where: str) -> None:
    f = tmp_path / "x.csv"
    if where == "header":
        f.write_bytes(b"u,i,t\xe9\n1,2,1700000000\n")
    else:
        f.write_bytes(b"u,i,t\n1,2,1700000000\n" + (b"3,\xc3(,1700000000\n" if where == "id" else b"3,4,17000\x80\n"))
    # polars decodes a header leniently: the mapped column then looks missing, and the error says why
    expected = r"no column\(s\) \['t'\].*not UTF-8.*`encoding`" if where == "header" else r"x\.csv, line 3 .*not valid UTF-8.*encoding"
    with pytest.raises(InputError, match=expected):
        build_dataset(config(f, time="t"), tmp_path / "ds")


def test_utf8_lossy_keeps_the_good_rows_and_rejects_the_damaged_ones(tmp_path: Path, capsys) -> None:
    f = _events(tmp_path / "events.csv", b"7,\xff8,1700000000\n7,9,17000\xff00000\n", n=500)
    code, _ = cli_build(f, tmp_path / "ds", "--time-col", "t", "--events-encoding", "utf8-lossy", capsys=capsys)
    assert code == 0
    ds = build_dataset(config(f, time="t", spec_kw={"encoding": "utf8-lossy"}), tmp_path / "ds2")
    assert ds.manifest["rows"]["rejected_by_reason"] == {"item_id_not_utf8": 1, "timestamp_unparsable": 1}
    assert ds.manifest["rows"]["in"] == 502 and ds.manifest["rows"]["out"] == ds.split("train").height
    assert not [i for i in ds.item_map.ids if "\ufffd" in i]


def test_a_latin1_log_reads_with_its_encoding(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_bytes("u,i\nrené,café\nzoë,thé\n".encode("latin-1"))
    with pytest.raises(InputError, match="line 2"):
        build_dataset(config(f), tmp_path / "ds")
    ds = build_dataset(config(f, spec_kw={"encoding": "latin-1"}), tmp_path / "ds")
    assert sorted(ds.user_map.ids) == ["rené", "zoë"]


def test_a_wrongly_declared_encoding_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_bytes("u,i\n1,a\n2,é\n".encode())
    with pytest.raises(InputError, match=r"x\.csv, line 3 .*not valid ascii"):
        build_dataset(config(f, spec_kw={"encoding": "ascii"}), tmp_path / "ds")


def test_invalid_bytes_in_item_metadata_exit_2_naming_the_items_section(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.csv").write_text("u,i\n1,10\n2,11\n")
    items = tmp_path / "items.csv"
    items.write_bytes(b"id,title\n10,Heat\n11,Am\xe9lie\n")
    with pytest.raises(InputError, match=r"items\.csv, line 3 .*\[items\]"):
        read_items(InputSpec(str(items)), "id", ("title",))
    code, err = cli_build(tmp_path / "x.csv", tmp_path / "ds", "--items", str(items), "--item-id-col", "id",
                          "--item-text-cols", "title", capsys=capsys)
    assert code == 2 and "items.csv, line 3" in err


def test_find_invalid_utf8_sees_across_block_boundaries(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_bytes("ab\nc€d\n".encode() + b"e\xfff\n")  # the euro sign is 3 bytes
    for block in (1, 2, 3, 4, 1 << 20):  # a straddled multi-byte character is not an error
        assert find_invalid_utf8([f], block=block) == (f, 3, 10, b"\xff")
    ok = tmp_path / "ok.csv"
    ok.write_bytes("é€😀\n".encode() * 5)
    assert find_invalid_utf8([ok], block=3) is None


# -- what held before the fix ------------------------------------------------------------


def test_an_unknown_encoding_name_exits_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.csv").write_text("u,i\n1,2\n")
    with pytest.raises(ConfigError, match="unknown encoding 'klingon'"):
        build_dataset(config(tmp_path / "x.csv", spec_kw={"encoding": "klingon"}), tmp_path / "ds")


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbfu,i\n1,2\n")
    ds = build_dataset(config(tmp_path / "x.csv"), tmp_path / "ds")
    assert ds.user_map.ids == ["1"]


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"u,i\n", "hold no rows")])
def test_empty_inputs_exit_2_with_a_clear_message(tmp_path: Path, capsys, content: bytes, message: str) -> None:
    (tmp_path / "x.csv").write_bytes(content)
    code, err = cli_build(tmp_path / "x.csv", tmp_path / "ds", capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_multibyte_ids_round_trip(tmp_path: Path) -> None:
    pl.DataFrame({"u": ["Ωmega", "日本"], "i": ["😀", "ü"]}).write_csv(tmp_path / "x.csv")
    ds = build_dataset(config(tmp_path / "x.csv"), tmp_path / "ds")
    assert sorted(ds.item_map.ids) == sorted(["😀", "ü"])
