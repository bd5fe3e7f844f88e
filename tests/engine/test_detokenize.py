from app.engine.detokenize import TextAssembler


def feed(assembler: TextAssembler, chunks: list[bytes]) -> list[str]:
    return [assembler.push(c) for c in chunks]


def test_chinese_fed_byte_by_byte_never_splits_a_character():
    text = "你好，世界"
    a = TextAssembler()
    pieces = feed(a, [bytes([b]) for b in text.encode()]) + [a.flush()]
    assert "".join(pieces) == text
    assert all(p == "" or p in text for p in pieces)
    assert [p for p in pieces if p] == list(text)  # each character appears whole, once


def test_an_unfinished_character_at_the_end_is_dropped_not_garbled():
    a = TextAssembler()
    assert a.push("好".encode() + "世".encode()[:2]) == "好"
    assert a.flush() == ""


def test_invalid_bytes_mid_stream_become_replacement_characters():
    a = TextAssembler()
    assert a.push(b"a\xffb") == "a\ufffdb"


def test_stop_string_split_across_tokens_is_cut_and_never_emitted():
    a = TextAssembler(stop=["<END>"])
    out = feed(a, [b"Hello <E", b"N", b"D> tail"])
    assert out == ["Hello ", "", ""]
    assert a.matched == "<END>" and a.flush() == ""


def test_a_held_back_stop_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    a = TextAssembler(stop=["。结束"])
    assert a.push("好的。".encode()) == "好的"
    assert a.push("然后".encode()) == "。然后"
    assert not a.stopped and a.matched is None


def test_held_back_prefix_is_flushed_at_the_end():
    a = TextAssembler(stop=["###"])
    assert a.push(b"done #") == "done "
    assert a.flush() == "#"


def test_earliest_of_several_stop_strings_wins():
    a = TextAssembler(stop=["B", "A"])
    assert a.push(b"xxAyyB") == "xx"
    assert a.matched == "A"
