"""The conversation rebuilt from messages: the last list shown, the focus, the last search."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from assistant.rules.state import Context, context_from_messages, message_text, tool_outcomes


def call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id,
                                              "type": "tool_call"}])


def results(call_id: str, ids: list[str], **extra: Any) -> ToolMessage:
    rows = [{"id": i, "title": f"T{i}", "price": 10.0 * n} for n, i in enumerate(ids, 1)]
    return ToolMessage(content="(data)", tool_call_id=call_id,
                       artifact={"results": rows, **extra})


def test_nothing_shown_yet() -> None:
    context = context_from_messages([SystemMessage("sys"), HumanMessage("hi")])
    assert context == Context()


def test_the_last_list_and_its_focus() -> None:
    messages = [
        HumanMessage("red dress\n[photo: upload-1]"),
        call("visual_search", {"upload_id": "upload-1"}, "a"), results("a", ["P1", "P2"]),
        AIMessage("answer"),
        HumanMessage("blue jeans"),
        call("text_search", {"query": "blue jeans"}, "b"), results("b", ["P3", "P4", "P5"]),
        AIMessage("answer"),
    ]
    context = context_from_messages(messages)
    assert context.shown == ("P3", "P4", "P5")
    assert context.focus == "P3"
    assert context.last_search is not None and context.last_search.name == "text_search"
    assert context.uploads == ("upload-1",)
    assert context.at(2) == "P4" and context.at(-1) == "P5" and context.at(4) is None
    assert context.price("P4") == 20.0
    assert set(context.products) == {"P1", "P2", "P3", "P4", "P5"}


def test_details_and_recommend_move_the_focus_not_details_the_list() -> None:
    messages = [
        call("text_search", {"query": "jeans"}, "a"), results("a", ["P1", "P2"]),
        call("product_details", {"product_id": "P2"}, "b"),
        ToolMessage(content="(data)", tool_call_id="b",
                    artifact={"product": {"id": "P2", "material": "Cotton"}}),
    ]
    context = context_from_messages(messages)
    assert (context.shown, context.focus) == (("P1", "P2"), "P2")
    assert context.products["P2"]["material"] == "Cotton"
    messages += [call("recommend", {"product_id": "P1", "mode": "complementary"}, "c"),
                 results("c", ["P7", "P8"], **{"for": {"id": "P1", "title": "TP1"}})]
    context = context_from_messages(messages)
    assert (context.shown, context.focus) == (("P7", "P8"), "P1")


def test_several_searches_in_one_message_make_one_list() -> None:
    message = AIMessage(content="", tool_calls=[
        {"name": "visual_search", "args": {"upload_id": "upload-1"}, "id": "a",
         "type": "tool_call"},
        {"name": "visual_search", "args": {"upload_id": "upload-2"}, "id": "b",
         "type": "tool_call"}])
    context = context_from_messages([message, results("a", ["P1", "P2"]),
                                     results("b", ["P2", "P3"])])
    assert context.shown == ("P1", "P2", "P3")


def test_failed_calls_change_nothing_and_are_outcomes_with_errors() -> None:
    messages = [call("text_search", {"query": "jeans"}, "a"), results("a", ["P1"]),
                call("compare", {"product_ids": ["P1", "X"]}, "b"),
                ToolMessage(content="Product X has not been shown", tool_call_id="b",
                            status="error")]
    assert context_from_messages(messages).shown == ("P1",)
    batches = tool_outcomes(messages)
    assert [o.ok for b in batches for o in b.outcomes] == [True, False]
    assert batches[1].outcomes[0].error == "Product X has not been shown"


def test_message_text_of_content_blocks() -> None:
    message = HumanMessage(content=[{"type": "text", "text": "red dress"},
                                    {"type": "text", "text": "[photo: upload-1]"}])
    assert message_text(message) == "red dress\n[photo: upload-1]"
