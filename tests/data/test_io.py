import json

import pytest

from rlhflab.data.io import read_records
from rlhflab.errors import DataError

ROWS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_jsonl_rows_are_line_numbers_and_blank_lines_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    recs = read_records(p)
    assert [(r.row, r.data["prompt"]) for r in recs] == [(1, "a"), (3, "b")]


@pytest.mark.parametrize("shape", ["list", "data", "train", "jsonl_in_json"])
def test_json_shapes(tmp_path, shape):
    p = tmp_path / "d.json"
    if shape == "list":
        p.write_text(json.dumps(ROWS))
    elif shape == "jsonl_in_json":
        p.write_text("\n".join(json.dumps(r) for r in ROWS))
    else:
        p.write_text(json.dumps({shape: ROWS, "meta": {"v": 1}}))
    recs = read_records(p)
    assert [r.data for r in recs] == ROWS
    assert [r.row for r in recs] == [1, 2]


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y", "margin": 0.5}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert read_records(tmp_path / "d.parquet")[0].data == rows[0]


def test_csv_round_trip_infers_types(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("prompt,completion,label\nhi,there,true\nyo,no,false\n", encoding="utf-8")
    recs = read_records(p)
    assert recs[0].data == {"prompt": "hi", "completion": "there", "label": True}
    assert [r.row for r in recs] == [1, 2]


def test_datasets_folder_and_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert [r.data for r in read_records(tmp_path / "ds")] == ROWS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert [r.data for r in read_records(tmp_path / "dd")] == ROWS


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_records(tmp_path / "nope.jsonl")


def test_unknown_extension_lists_supported(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("hello")
    with pytest.raises(DataError) as e:
        read_records(p)
    msg = str(e.value)
    assert "d.txt" in msg and "unknown file extension '.txt'" in msg
    assert all(x in msg for x in (".jsonl", ".json", ".parquet", ".csv", "save_to_disk"))


def test_plain_folder_is_not_a_dataset(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match="not a `datasets` folder"):
        read_records(tmp_path / "f")


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "")])
def test_empty_file(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError) as e:
        read_records(p)
    assert name in str(e.value) and "no rows" in str(e.value)


def test_invalid_json_line_names_line_and_column(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n')
    with pytest.raises(DataError) as e:
        read_records(p)
    assert e.value.row == 3
    assert "bad.jsonl, row 3" in str(e.value) and "line 3, column 16" in str(e.value)


def test_non_utf8_names_line_and_byte_offset(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        read_records(p)
    assert e.value.row == 2
    assert "latin.jsonl, row 2" in str(e.value) and "0xe9 at byte offset 15 of line 2" in str(e.value)


def test_non_utf8_csv(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"prompt\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin.csv, row 2: not UTF-8.*byte offset 3"):
        read_records(p)


def test_line_that_is_not_an_object(tmp_path):
    p = tmp_path / "arr.jsonl"
    p.write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    with pytest.raises(DataError) as e:
        read_records(p)
    assert "arr.jsonl, row 2" in str(e.value) and "JSON array, expected an object" in str(e.value)
