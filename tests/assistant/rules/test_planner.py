"""The rules planner against a real search engine, driven as the agent drives a chat model:
each planned call runs through the real tools and its result comes back as a tool message."""

from __future__ import annotations

import re

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from assistant.rules.planner import RulesChatModel
from assistant.session import Session
from assistant.tools import ShopTools
from retrieval.recommend import load_rules
from tests.assistant.rules.conftest import Driver
from tests.conftest import COLOURS, draw_product


def test_it_is_a_tool_calling_chat_model(engine) -> None:
    model = RulesChatModel(engine=engine)
    assert model._llm_type == "shop-rules"
    assert model.bind_tools(ShopTools(engine, Session()).langchain_tools()) is model
    reply = model.invoke([HumanMessage("red dress for women")])
    assert isinstance(reply, AIMessage) and reply.content == ""
    (call,) = reply.tool_calls
    assert call["name"] == "text_search" and call["id"] and call["type"] == "tool_call"
    assert call["args"] == {"query": "red dress for women", "k": 5}


def test_a_multi_turn_conversation(driver: Driver) -> None:
    engine = driver.model.engine
    # 1. A search: only blue women's jeans.
    turn = driver.say("blue jeans for women")
    assert turn.calls == [("text_search", {"query": "blue jeans for women", "k": 5})]
    first = turn.results[0]["results"]
    assert len(first) >= 2
    for row in first:
        assert (row["colour"], row["category"], row["gender"]) == ("Blue", "Jeans", "Women")
    assert turn.answer.splitlines()[0].startswith('Top ')
    assert [re.search(r" \((P\d{4})\)", line).group(1)  # type: ignore[union-attr]
            for line in turn.answer.splitlines()[1:]] == [row["id"] for row in first]

    # 2. "the second one but cheaper": below the second's price, like it otherwise.
    second = engine.product(first[1]["id"])
    turn = driver.say("the second one but cheaper")
    ((name, args),) = turn.calls
    assert name == "text_search"
    assert args["filters"]["price_max"] < second.price
    cheaper = turn.results[0]["results"]
    assert cheaper and all(row["price"] < second.price for row in cheaper)
    relaxed = turn.results[0].get("relaxed", [])
    assert set(relaxed) <= {"colour", "category", "gender"}
    for key in {"colour", "category", "gender"} - set(relaxed):
        assert all(row[key] == (second.category if key == "category"
                                else second.attributes[key]) for row in cheaper)
    if relaxed:
        assert "so I left out" in turn.answer
    else:
        assert f"cheaper than {second.title} ({second.product_id})" in turn.answer

    # 3. "what goes with it?": things that go with the top of that list.
    anchor = engine.product(cheaper[0]["id"])
    turn = driver.say("what goes with it?")
    assert turn.calls == [("recommend", {"product_id": anchor.product_id,
                                         "mode": "complementary", "k": 5})]
    outfit = turn.results[0]["results"]
    assert outfit
    rules, _ = load_rules()
    for row in outfit:
        assert row["category"] in rules[anchor.category]
        assert row["gender"] in (anchor.attributes["gender"], "Unisex")
    assert turn.answer.splitlines()[0] == f"These go with {anchor.title} ({anchor.product_id}):"

    # 4. "is it cotton?": the same product; the catalog has no material, so it says so.
    turn = driver.say("is it cotton?")
    assert turn.calls == [("product_details", {"product_id": anchor.product_id})]
    assert turn.answer == (f"{anchor.title} ({anchor.product_id}):\nThat is not in the "
                           f"catalog: {anchor.title} ({anchor.product_id}) has no 'material' "
                           "field.")


def test_details_compare_and_similar_by_position_and_id(driver: Driver) -> None:
    engine = driver.model.engine
    shown = [r["id"] for r in driver.say("black watches").results[0]["results"]]
    assert len(shown) >= 2
    turn = driver.say("how much is the second one?")
    second = engine.product(shown[1])
    assert turn.calls == [("product_details", {"product_id": second.product_id})]
    assert f"price: {second.price:,.0f} {second.currency} (catalog field 'price')" in \
        turn.answer
    turn = driver.say("compare the first two")
    assert turn.calls == [("compare", {"product_ids": shown[:2]})]
    assert turn.answer.startswith("Comparing ")
    typed = next(p.product_id for p in engine.products if p.category == "Dresses")
    turn = driver.say(f"similar to {typed}")
    assert turn.calls == [("recommend", {"product_id": typed, "mode": "similar", "k": 5})]
    assert turn.answer.startswith(f"Top {len(turn.results[0]['results'])} similar to ")


def test_refining_a_photo_search(driver: Driver) -> None:
    photo = draw_product("Dresses", COLOURS["Red"])
    turn = driver.say("like this but in black", photos=(photo,))
    assert turn.calls == [("visual_search", {"upload_id": "upload-1", "refine": "black",
                                             "k": 5})]
    assert all(r["colour"] == "Black" for r in turn.results[0]["results"])
    assert turn.answer.startswith("Top ") and "look like your photo" in turn.answer
    turn = driver.say("for women")
    ((name, args),) = turn.calls
    assert (name, args["upload_id"]) == ("visual_search", "upload-1")
    for row in turn.results[0]["results"]:
        assert (row["colour"], row["gender"]) == ("Black", "Women")


def test_what_goes_with_a_photo_takes_two_steps(driver: Driver) -> None:
    photo = draw_product("Jeans", COLOURS["Blue"])
    turn = driver.say("what goes with this?", photos=(photo,))
    assert [name for name, _ in turn.calls] == ["visual_search", "recommend"]
    top = turn.results[0]["results"][0]["id"]
    assert turn.calls[1][1] == {"product_id": top, "mode": "complementary", "k": 5}
    assert turn.answer.startswith("These go with ")


def test_a_tool_error_ends_the_turn_politely(engine) -> None:
    model = RulesChatModel(engine=engine)
    messages = [HumanMessage("compare P0001 and P0002")]
    reply = model.invoke(messages)
    (call,) = reply.tool_calls
    messages += [reply, ToolMessage(content="Product P0001 has not been shown in this "
                                    "conversation.", tool_call_id=call["id"], status="error")]
    answer = model.invoke(messages)
    assert not answer.tool_calls
    assert answer.content == ("I could not do that: Product P0001 has not been shown in this "
                              "conversation.")


def test_the_model_keeps_no_state(driver: Driver, engine) -> None:
    driver.say("red tshirts")
    driver.say("for women")
    driver.messages.append(HumanMessage("cheaper ones"))
    first = driver.model.invoke(driver.messages)
    again = RulesChatModel(engine=engine).invoke(driver.messages)  # a fresh instance
    assert first.tool_calls == again.tool_calls
    last = next(m for m in reversed(driver.messages) if isinstance(m, ToolMessage))
    assert first.tool_calls[0]["args"]["filters"]["price_max"] < min(
        p["price"] for p in last.artifact["results"])


def test_calls_of_another_backend_in_the_turn_are_not_mistaken_for_its_own(engine) -> None:
    model = RulesChatModel(engine=engine)
    foreign = AIMessage(content="", tool_calls=[{"name": "text_search", "args": {"query": "x"},
                                                 "id": "call_llm_1", "type": "tool_call"}])
    messages = [HumanMessage("blue jeans"), foreign,
                ToolMessage(content="timeout", tool_call_id="call_llm_1", status="error")]
    reply = model.invoke(messages)
    assert reply.tool_calls[0]["args"] == {"query": "blue jeans", "k": 5}


def test_small_talk_needs_no_tool(engine) -> None:
    reply = RulesChatModel(engine=engine).invoke([HumanMessage("hello!")])
    assert not reply.tool_calls and str(reply.content).startswith("Hello!")


def test_it_runs_the_real_agent_graph_with_checkpointing(engine) -> None:
    """The same ``create_agent`` graph and tools as the LLM backends; the state between
    turns lives only in the checkpointed messages."""
    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver

    tools = ShopTools(engine, Session())
    agent = create_agent(RulesChatModel(engine=engine), tools=tools.langchain_tools(),
                         system_prompt="You are the shop's assistant.",
                         checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t-1"}}
    state = agent.invoke({"messages": [HumanMessage("black watches for women")]}, config)
    (tool_message,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    shown = [r["id"] for r in tool_message.artifact["results"]]
    assert shown and all(engine.product(i).attributes["colour"] == "Black" for i in shown)
    assert state["messages"][-1].content.startswith("Top ")
    # A new agent over the same checkpoint: "the first one" resolves from the messages.
    agent = create_agent(RulesChatModel(engine=engine), tools=tools.langchain_tools(),
                         checkpointer=agent.checkpointer)
    state = agent.invoke({"messages": [HumanMessage("is the first one in stock?")]}, config)
    first = engine.product(shown[0])
    expected = "Yes" if first.in_stock else "No"
    assert state["messages"][-1].content == (
        f"{first.title} ({first.product_id}):\n{expected} — in_stock: "
        f"{'yes' if first.in_stock else 'no'} (catalog field 'in_stock')")


def test_the_assistant_answers_with_the_rules_when_no_llm_is_configured(engine) -> None:
    """The real turn path (``ShopAssistant`` with no LLM): guard rails, budget, photos."""
    from assistant.agent import ShopAssistant

    conversation = ShopAssistant(engine).conversation()
    first = conversation.turn("blue jeans for women")
    assert first.backend == "rules" and first.fallback_reason is None
    assert first.products and all(p["colour"] == "Blue" for p in first.products)
    assert [c.name for c in first.tool_calls] == ["text_search"]
    assert first.answer.startswith("Top ")
    second = conversation.turn("is the second one cotton?")
    assert [c.arguments for c in second.tool_calls] == [
        {"product_id": first.products[1]["id"]}]
    assert "That is not in the catalog" in second.answer
    third = conversation.turn("like this but for men",
                              photos=[draw_product("Jeans", COLOURS["Blue"])])
    assert [(c.name, c.arguments.get("upload_id")) for c in third.tool_calls] == [
        ("visual_search", "upload-1")]
    assert third.products and all(p["gender"] == "Men" for p in third.products)
