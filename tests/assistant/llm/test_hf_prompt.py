"""Messages and tools in chat-template shape; tool choice as a prefill; the call format."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from assistant.llm.hf_prompt import (
    ANY_TOOL,
    detect_tool_format,
    format_tools,
    resolve_tool_choice,
    text_of,
    to_chat_messages,
    tool_prefill,
)
from assistant.llm.toolcalls import parse_tool_calls

LLAMA_31_TEMPLATE_EXCERPT = (
    '{{- "Given the following functions, please respond with a JSON for a function call with '
    'its proper arguments that best answers the given prompt.\\n\\n" }}{{- \'Respond in the '
    'format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "' }}{%- if builtin_tools is defined %}{{- \"<|python_tag|>\" }}{%- endif %}")


def test_messages_become_template_dicts() -> None:
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("red dress"),
        AIMessage("", tool_calls=[{"name": "text_search", "args": {"query": "red dress"},
                                   "id": "call_1"}]),
        ToolMessage("3 results", tool_call_id="call_1", name="text_search"),
        AIMessage("Here they are."),
        ChatMessage(role="user", content="thanks"),
    ]
    assert to_chat_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "red dress"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "text_search",
                                      "arguments": {"query": "red dress"}}}]},
        {"role": "tool", "content": "3 results", "tool_call_id": "call_1",
         "name": "text_search"},
        {"role": "assistant", "content": "Here they are."},
        {"role": "user", "content": "thanks"},
    ]


def test_unsupported_message_type() -> None:
    with pytest.raises(ValueError, match="FunctionMessage"):
        to_chat_messages([FunctionMessage(name="f", content="x")])


def test_text_of_blocks() -> None:
    assert text_of("plain") == "plain"
    assert text_of([{"type": "text", "text": "a"}, "b", {"type": "reasoning", "x": 1}]) == "a\nb"
    assert text_of({"products": [1, 2]}) == '{"products": [1, 2]}'
    assert text_of([{"id": "P1", "title": "Dress é"}]) == '{"id": "P1", "title": "Dress é"}'
    for media in ("image", "image_url", "audio", "file"):
        with pytest.raises(ValueError, match="upload id"):
            text_of([{"type": media, "url": "x"}])


def test_format_tools_accepts_functions_and_schemas() -> None:
    def compare(product_ids: list[str]) -> str:
        """Compare products side by side.

        Args:
            product_ids: Two to four ids.
        """
        return ""

    schema = {"name": "recommend", "description": "Similar items.",
              "parameters": {"type": "object", "properties": {"product_id": {"type": "string"}}}}
    tools = format_tools([compare, schema])
    assert [t["function"]["name"] for t in tools] == ["compare", "recommend"]
    assert all(t["type"] == "function" for t in tools)
    assert format_tools(tools) == tools  # already formatted: unchanged


@pytest.fixture
def tools() -> list[dict]:
    return format_tools([{"name": "a", "description": "A.", "parameters": {"type": "object"}},
                         {"name": "b", "description": "B.", "parameters": {"type": "object"}}])


def test_tool_choice_values(tools) -> None:
    assert resolve_tool_choice(None, tools) == (tools, None)
    assert resolve_tool_choice("auto", tools) == (tools, None)
    assert resolve_tool_choice("none", tools) == ([], None)
    assert resolve_tool_choice("any", tools) == (tools, ANY_TOOL)
    assert resolve_tool_choice("required", tools) == (tools, ANY_TOOL)
    assert resolve_tool_choice(True, tools) == (tools, ANY_TOOL)
    assert resolve_tool_choice("b", tools) == (tools, "b")
    assert resolve_tool_choice({"type": "function", "function": {"name": "a"}}, tools)[1] == "a"
    assert resolve_tool_choice("any", tools[:1]) == (tools[:1], "a")  # only one to choose


@pytest.mark.parametrize("choice, message", [
    ("c", "not a bound tool"),
    ({"type": "function"}, "not understood"),
    (3, "not understood"),
])
def test_bad_tool_choice(tools, choice, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_tool_choice(choice, tools)


def test_forcing_without_tools() -> None:
    with pytest.raises(ValueError, match="no tools are bound"):
        resolve_tool_choice("any", [])


def test_format_detection() -> None:
    assert detect_tool_format("... <tool_call>\\n{...}</tool_call> ...") == "hermes"
    assert detect_tool_format(LLAMA_31_TEMPLATE_EXCERPT) == "llama3"
    assert detect_tool_format(None) == "hermes"


@pytest.mark.parametrize("fmt", ["hermes", "llama3"])
def test_prefills_complete_into_parseable_calls(fmt) -> None:
    assert tool_prefill(fmt, None) == ""
    named = tool_prefill(fmt, "text_search") + '{"query": "red"}}'
    if fmt == "hermes":
        named += "\n</tool_call>"
    parsed = parse_tool_calls(named)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("text_search",
                                                                    {"query": "red"})]
    key = "arguments" if fmt == "hermes" else "parameters"
    anyone = tool_prefill(fmt, ANY_TOOL)
    anyone += ('{"name": "b", "' + key + '": {}}') if fmt == "hermes" else 'b", "parameters": {}}'
    assert [c["name"] for c in parse_tool_calls(anyone).tool_calls] == ["b"]
