"""llm.generate.text_stream: streamed text never shows half a character or a stop token."""

from __future__ import annotations

from llm.data.tokenizer import ByteTokenizer
from llm.generate.text_stream import TextStream


def test_split_multibyte_characters_are_held_back_until_complete():
    stream = TextStream(ByteTokenizer(), stop_ids=[10])
    e_acute = list("é".encode())
    assert stream.push([104, e_acute[0]]) == "h"
    assert stream.push([e_acute[1], 33]) == "é!"
    assert stream.push([10]) == ""  # the stop token is not shown
    assert stream.push([e_acute[0]]) == ""
    assert stream.flush() == "\ufffd"  # an unfinished character prints once the row is over


def test_pushed_pieces_concatenate_to_the_decoded_text():
    text = "naïve café — ok"
    ids = list(text.encode())
    stream = TextStream(ByteTokenizer())
    out = "".join(stream.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + stream.flush()
    assert out == text
