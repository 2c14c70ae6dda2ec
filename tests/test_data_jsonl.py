"""llm.data.jsonl.read_jsonl: strict reading of small JSONL files, one-line errors."""

import json

import pytest

from llm.data.jsonl import read_jsonl
from llm.errors import UserError


def test_records_come_with_their_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    odd = "a\u2028b\u0085c"  # splitlines() would cut these strings in two
    path.write_bytes(('{"x": 1}\r\n\n' + json.dumps({"x": odd}, ensure_ascii=False) + "\n   \n[3]").encode())
    assert list(read_jsonl(path)) == [(1, {"x": 1}), (3, {"x": odd}), (5, [3])]


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"x": 1}\n{"x": "\xff"}\n', "--input '{path}' is not UTF-8 (line 2, byte 16); re-encode it as UTF-8"),
        (b'{"x": 1}\n\n{"x": \n', "line 3 of {path} is not JSON (Expecting value); write one object per line"),
    ],
)
def test_bad_files_stop_with_one_line_naming_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        list(read_jsonl(path, "--input"))
    assert str(err.value) == message.format(path=path)


def test_bad_bytes_after_the_records_taken_still_stop_the_read(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_bytes(b'{"x": 1}\n' * 3 + b"\xfe\n")
    with pytest.raises(UserError, match="line 4"):
        read_jsonl(path)  # decoded whole before the first record, not when the bad line is reached


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match="JSONL file '.*nope.jsonl' does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
