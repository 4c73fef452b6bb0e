"""Parsing tool calls out of generated text: Hermes/Qwen tags, Llama 3.1 JSON, and garbage."""

from __future__ import annotations

import itertools
import json

import pytest

from assistant.llm.toolcalls import (
    StreamSplitter,
    cut_at_stop,
    new_tool_call_id,
    parse_tool_calls,
)


@pytest.fixture
def ids():
    counter = itertools.count(1)
    return lambda: f"id{next(counter)}"


def calls_of(parsed) -> list[tuple[str, dict]]:
    return [(c["name"], c["args"]) for c in parsed.tool_calls]


# --- Qwen2.5 / Hermes --------------------------------------------------------------------


def test_hermes_single_call(ids) -> None:
    text = ('<tool_call>\n{"name": "text_search", "arguments": {"query": "red dress", "k": 5}}'
            "\n</tool_call>")
    parsed = parse_tool_calls(text, make_id=ids)
    assert parsed.content == ""
    assert parsed.tool_calls == [{"name": "text_search", "args": {"query": "red dress", "k": 5},
                                  "id": "id1", "type": "tool_call"}]
    assert parsed.invalid_tool_calls == []


def test_hermes_several_calls_with_text_around(ids) -> None:
    text = ("Let me look.\n<tool_call>\n"
            '{"name": "text_search", "arguments": {"query": "red dress"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "product_details", "arguments": {"product_id": "15970"}}\n'
            "</tool_call>\nOne moment.")
    parsed = parse_tool_calls(text, make_id=ids)
    assert parsed.content == "Let me look.\nOne moment."
    assert calls_of(parsed) == [("text_search", {"query": "red dress"}),
                                ("product_details", {"product_id": "15970"})]
    assert [c["id"] for c in parsed.tool_calls] == ["id1", "id2"]


def test_hermes_arguments_as_json_string() -> None:
    text = ('<tool_call>{"name": "text_search", '
            '"arguments": "{\\"query\\": \\"blue jeans\\", \\"k\\": 3}"}</tool_call>')
    assert calls_of(parse_tool_calls(text)) == [("text_search", {"query": "blue jeans", "k": 3})]


@pytest.mark.parametrize("arguments", ['""', "null", "{}"])
def test_hermes_empty_arguments(arguments: str) -> None:
    text = f'<tool_call>{{"name": "reset", "arguments": {arguments}}}</tool_call>'
    assert calls_of(parse_tool_calls(text)) == [("reset", {})]


def test_hermes_missing_arguments_and_parameters_key() -> None:
    assert calls_of(parse_tool_calls('<tool_call>{"name": "reset"}</tool_call>')) == [
        ("reset", {})]
    text = '<tool_call>{"name": "text_search", "parameters": {"query": "x"}}</tool_call>'
    assert calls_of(parse_tool_calls(text)) == [("text_search", {"query": "x"})]


def test_braces_and_closing_tags_inside_strings() -> None:
    query = 'dress {size: "M"} </tool_call> <tool_call> ;}{'
    text = ("<tool_call>\n" + json.dumps({"name": "text_search", "arguments": {"query": query}})
            + "\n</tool_call> after")
    parsed = parse_tool_calls(text)
    assert calls_of(parsed) == [("text_search", {"query": query})]
    assert parsed.content == "after"


def test_nested_objects_and_arrays() -> None:
    args = {"filters": {"price": {"max": 80, "min": 10}, "colour": ["red", "wine"]},
            "query": "dress"}
    text = f"<tool_call>{json.dumps({'name': 'text_search', 'arguments': args})}</tool_call>"
    assert calls_of(parse_tool_calls(text)) == [("text_search", args)]


def test_unicode_arguments_and_content() -> None:
    args = {"query": "robe rouge é 👗 連衣裙", "note": "\u00e9\n\t\\"}
    text = ("Voilà 👗\n<tool_call>"
            + json.dumps({"name": "text_search", "arguments": args}, ensure_ascii=False)
            + "</tool_call>")
    parsed = parse_tool_calls(text)
    assert calls_of(parsed) == [("text_search", args)]
    assert parsed.content == "Voilà 👗"
    escaped = "<tool_call>" + json.dumps({"name": "s", "arguments": args}) + "</tool_call>"
    assert calls_of(parse_tool_calls(escaped)) == [("s", args)]


def test_several_objects_or_a_list_in_one_block() -> None:
    text = ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n'
            '{"name": "b", "arguments": {"y": 2}}\n</tool_call>')
    assert calls_of(parse_tool_calls(text)) == [("a", {"x": 1}), ("b", {"y": 2})]
    listed = ('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'
              "</tool_call>")
    assert calls_of(parse_tool_calls(listed)) == [("a", {}), ("b", {})]


def test_fenced_json_and_openai_shape() -> None:
    text = '<tool_call>\n```json\n{"name": "a", "arguments": {"x": 1}}\n```\n</tool_call>'
    assert calls_of(parse_tool_calls(text)) == [("a", {"x": 1})]
    wire = ('<tool_call>{"type": "function", "function": {"name": "a", '
            '"arguments": "{\\"x\\": 1}"}}</tool_call>')
    assert calls_of(parse_tool_calls(wire)) == [("a", {"x": 1})]


def test_unterminated_block_with_complete_json_is_a_call() -> None:
    parsed = parse_tool_calls('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n')
    assert calls_of(parsed) == [("a", {"x": 1})]
    assert parsed.invalid_tool_calls == []


def test_stray_closing_tag_is_not_content() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call></tool_call>'
                              " done")
    assert parsed.content == "done"


# --- malformed calls become invalid_tool_calls ---------------------------------------------


@pytest.mark.parametrize("body, error", [
    ('{"name": "text_search", "arguments": {"query": "red}', "malformed JSON"),
    ('{"name": "text_search", "arguments": {"query": "red"}', "malformed JSON"),
    ("{'name': 'text_search', 'arguments': {}}", "malformed JSON"),
    ('{"arguments": {"query": "red"}}', "no 'name'"),
    ('{"name": "", "arguments": {}}', "no 'name'"),
    ('{"name": 3, "arguments": {}}', "no 'name'"),
    ('{"name": "text_search", "arguments": "{not json"}', "arguments string is not valid JSON"),
    ('{"name": "text_search", "arguments": [1, 2]}', "must be a JSON object"),
    ('"just a string"', "must be a JSON object"),
    ("", "empty <tool_call>"),
])
def test_malformed_hermes_calls_are_reported(body: str, error: str) -> None:
    parsed = parse_tool_calls(f"Checking.<tool_call>\n{body}\n</tool_call>")
    assert parsed.tool_calls == []
    assert len(parsed.invalid_tool_calls) == 1
    bad = parsed.invalid_tool_calls[0]
    assert error in bad["error"]
    assert bad["type"] == "invalid_tool_call"
    assert bad["id"].startswith("call_")
    assert parsed.content == "Checking."


def test_malformed_call_keeps_name_and_raw_text() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "text_search", "arguments": {"q": }'
                              "</tool_call>")
    bad = parsed.invalid_tool_calls[0]
    assert bad["name"] == "text_search"
    assert bad["args"] == '{"name": "text_search", "arguments": {"q": }'


def test_a_good_call_survives_a_bad_one() -> None:
    text = ('<tool_call>{"name": "a", "arguments": {oops}}</tool_call>'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>')
    parsed = parse_tool_calls(text)
    assert calls_of(parsed) == [("b", {"x": 1})]
    assert [bad["name"] for bad in parsed.invalid_tool_calls] == ["a"]


def test_unterminated_malformed_block() -> None:
    parsed = parse_tool_calls('Sure <tool_call>{"name": "a", "argu')
    assert parsed.content == "Sure"
    assert parsed.invalid_tool_calls[0]["args"] == '{"name": "a", "argu'


# --- Llama 3.1 -------------------------------------------------------------------------------


def test_llama_json_call(ids) -> None:
    parsed = parse_tool_calls('{"name": "text_search", "parameters": {"query": "red dress"}}',
                              make_id=ids)
    assert parsed.content == ""
    assert parsed.tool_calls == [{"name": "text_search", "args": {"query": "red dress"},
                                  "id": "id1", "type": "tool_call"}]


def test_llama_python_tag_and_semicolons() -> None:
    text = ('<|python_tag|>{"name": "a", "parameters": {"x": "1;2"}}; '
            '{"name": "b", "parameters": {"y": {"z": [1, 2]}}}')
    assert calls_of(parse_tool_calls(text)) == [("a", {"x": "1;2"}), ("b", {"y": {"z": [1, 2]}})]


def test_llama_text_before_python_tag_is_content() -> None:
    parsed = parse_tool_calls('Searching now.<|python_tag|>{"name": "a", "parameters": {}}')
    assert parsed.content == "Searching now."
    assert calls_of(parsed) == [("a", {})]


def test_llama_garbage_after_python_tag_is_invalid() -> None:
    parsed = parse_tool_calls('<|python_tag|>brave_search.call(query="red dress")')
    assert parsed.tool_calls == []
    assert "malformed JSON" in parsed.invalid_tool_calls[0]["error"]
    good_then_bad = parse_tool_calls('<|python_tag|>{"name": "a", "parameters": {}}; {"name": ')
    assert calls_of(good_then_bad) == [("a", {})]
    assert len(good_then_bad.invalid_tool_calls) == 1


def test_llama_malformed_bare_json_call_is_invalid() -> None:
    parsed = parse_tool_calls('{"name": "text_search", "parameters": {"query": "red')
    assert parsed.tool_calls == []
    assert parsed.invalid_tool_calls[0]["name"] == "text_search"


def test_llama_call_followed_by_prose() -> None:
    parsed = parse_tool_calls('{"name": "a", "parameters": {"x": 1}}\nI will look that up.')
    assert calls_of(parsed) == [("a", {"x": 1})]
    assert parsed.content == "I will look that up."


def test_llama_function_tag_syntax() -> None:
    parsed = parse_tool_calls('OK <function=text_search>{"query": "red dress"}</function>'
                              " <function=bad>{oops}</function>")
    assert calls_of(parsed) == [("text_search", {"query": "red dress"})]
    assert parsed.invalid_tool_calls[0]["name"] == "bad"
    assert parsed.content == "OK"


# --- plain answers and garbage stay content --------------------------------------------------


@pytest.mark.parametrize("text", [
    "Here are three red dresses under 80.",
    '{"colour": "red", "price": 80}',  # JSON, but not shaped like a call
    '[1, 2, 3] are the sizes in stock',
    "{not json at all",
    "}{][",
    '{"name": "Red dress"}',  # a product, not a call: no arguments / parameters
    "<tool_response>catalog data</tool_response>",
    "",
    "   \n\t ",
    "\x00\x1b[31m\ufffd garbage",
    "<tool_c",
])
def test_non_calls_stay_content(text: str) -> None:
    parsed = parse_tool_calls(text)
    assert parsed.tool_calls == [] and parsed.invalid_tool_calls == []
    assert parsed.content == text.strip()


def test_random_garbage_never_raises_and_streams_consistently(seeded_rng) -> None:
    alphabet = ["{", "}", "[", "]", '"', ":", ",", ";", "\\", '"name"', '"arguments"',
                '"parameters"', "name", "<tool_call>", "</tool_call>", "<tool", "</tool",
                "<|python_tag|>", "<|py", "<function=x>", "</function>", "<func", " ", "\n",
                "é", "👗", "1", "null", "true", "STOP", "ST"]
    for _ in range(400):
        picks = seeded_rng.integers(0, len(alphabet), size=int(seeded_rng.integers(0, 41)))
        text = "".join(alphabet[i] for i in picks)
        parsed = parse_tool_calls(text)
        for call in parsed.tool_calls:
            assert isinstance(call["name"], str) and call["name"]
            assert isinstance(call["args"], dict)
        for bad in parsed.invalid_tool_calls:
            assert bad["error"]
        size = int(seeded_rng.integers(1, 6))
        shown, streamed = stream_in_pieces(text, size, stop=("STOP",))
        assert shown == streamed.content == parse_tool_calls(cut_at_stop(text, ["STOP"])).content


def test_new_ids_are_unique() -> None:
    made = {new_tool_call_id() for _ in range(1000)}
    assert len(made) == 1000
    assert all(i.startswith("call_") and len(i) == 29 for i in made)


# --- streaming -------------------------------------------------------------------------------


def stream_in_pieces(text: str, size: int, stop: tuple[str, ...] = ()) -> tuple[str, object]:
    splitter = StreamSplitter(stop)
    shown = "".join(splitter.feed(text[i:i + size]) for i in range(0, len(text), size))
    rest, parsed = splitter.finish()
    return shown + rest, parsed


@pytest.mark.parametrize("text", [
    "Plain answer, no calls.",
    "  Leading and trailing spaces  \n",
    'Let me look.\n<tool_call>\n{"name": "a", "arguments": {"x": "<tool_call>"}}\n</tool_call>'
    "\nDone.",
    '{"name": "a", "parameters": {"x": 1}}',
    'Search<|python_tag|>{"name": "a", "parameters": {}}',
    "Answer with <tool and <|python but no call",
    "Voilà 👗 連衣裙",
])
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_streamed_content_equals_parsed_content(text: str, size: int) -> None:
    shown, parsed = stream_in_pieces(text, size)
    assert shown == parse_tool_calls(text).content == parsed.content


def test_stream_holds_back_calls_and_stop_sequences() -> None:
    splitter = StreamSplitter(["STOP"])
    assert splitter.feed("Hello ") == "Hello"
    assert splitter.feed("there <tool") == " there"
    assert splitter.feed('_call>{"name": "a", "arguments": {}}') == ""
    rest, parsed = splitter.finish()
    assert rest == "" and calls_of(parsed) == [("a", {})]
    stopped = StreamSplitter(["STOP"])
    assert stopped.feed("one two ST") == "one two"
    assert stopped.feed("OP three") == ""
    assert stopped.finish()[1].content == "one two"


def test_cut_at_stop() -> None:
    assert cut_at_stop("a b STOP c END", ["END", "STOP"]) == "a b "
    assert cut_at_stop("abc", []) == "abc"
    assert cut_at_stop("abc", [""]) == "abc"
