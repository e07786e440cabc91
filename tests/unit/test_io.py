import pytest

from kaggle_kit.errors import InputError, KitError
from kaggle_kit.io import Column, read_csv, write_csv_atomic, write_text_atomic

COLS = [Column("id", "id"), Column("prompt"), Column("resp", "json_list")]


def write(tmp_path, text, name="t.csv", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_reads_good_file_and_parses_json(tmp_path):
    p = write(tmp_path, 'id,prompt,resp,extra\n1,hi,"[""a"", null]",x\n2,yo,"[""b""]",y\n')
    df = read_csv(p, COLS)
    assert df["resp"].tolist() == [["a", None], ["b"]]
    assert df["extra"].tolist() == ["x", "y"]


def test_missing_column_names_file_and_column(tmp_path):
    p = write(tmp_path, "id,prompt\n1,hi\n")
    with pytest.raises(InputError) as e:
        read_csv(p, COLS)
    assert str(p) in str(e.value) and "'resp'" in str(e.value) and e.value.column == "resp"


@pytest.mark.parametrize("cell", ["", "   "])
def test_empty_text_names_row_and_column(tmp_path, cell):
    p = write(tmp_path, f'id,prompt,resp\n1,hi,"[""a""]"\n2,{cell},"[""a""]"\n')
    with pytest.raises(InputError) as e:
        read_csv(p, COLS)
    assert (e.value.row, e.value.column) == (2, "prompt")
    assert "row 2" in str(e.value) and "'prompt'" in str(e.value)


def test_missing_cell_nan_is_named(tmp_path):
    p = write(tmp_path, 'id,prompt,resp\n1,hi,"[""a""]"\n2,"[""a""]"\n')  # row 2 lacks a field
    with pytest.raises(InputError) as e:
        read_csv(p, COLS)
    assert e.value.row == 2 and e.value.column == "resp"


def test_literal_na_is_text_not_missing(tmp_path):
    p = write(tmp_path, 'id,prompt,resp\n1,NA,"[""None""]"\n')
    assert read_csv(p, COLS)["prompt"].tolist() == ["NA"]


@pytest.mark.parametrize("cell", ['"not json"', '"{""a"": 1}"', '"[1, 2]"', '"[]"'])
def test_json_list_errors_name_row_and_column(tmp_path, cell):
    p = write(tmp_path, f"id,prompt,resp\n1,hi,{cell}\n")
    with pytest.raises(InputError) as e:
        read_csv(p, COLS)
    assert (e.value.row, e.value.column) == (1, "resp")


def test_duplicate_ids_are_named(tmp_path):
    p = write(tmp_path, 'id,prompt,resp\n7,a,"[""x""]"\n8,b,"[""x""]"\n7,c,"[""x""]"\n')
    with pytest.raises(InputError, match=r"duplicate ids \['7'\] at rows \[1, 3\]"):
        read_csv(p, COLS)


def test_bom_and_crlf_are_fine(tmp_path):
    p = write(tmp_path, '\ufeffid,prompt,resp\r\n1,hi,"[""a""]"\r\n'.encode("utf-8"), mode="wb")
    assert read_csv(p, COLS)["id"].tolist() == ["1"]


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"id,prompt,resp\n", "no data rows"), (b'id,prompt,resp\n1,caf\xe9,"[]"\n', "not UTF-8")],
)
def test_empty_header_only_and_bad_encoding(tmp_path, content, match):
    p = write(tmp_path, content, mode="wb")
    with pytest.raises(InputError, match=match):
        read_csv(p, COLS)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_csv(tmp_path / "nope.csv", COLS)


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    import os

    import pandas as pd

    target = tmp_path / "submission.csv"
    write_text_atomic("id,prediction\n1,A B C\n", target)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(KitError, match="No space left on device"):
        write_csv_atomic(pd.DataFrame({"id": [1], "prediction": ["B"]}), target)
    assert target.read_text() == "id,prediction\n1,A B C\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp file left behind
