"""The ``openai:`` backend against a real HTTP server on 127.0.0.1 that the test starts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

from assistant.llm import LLMUnavailableError, check_server, create_chat_model

MODEL = "qwen2.5-7b-instruct"


def completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}}


PLAIN = completion({"role": "assistant", "content": "Here are three red dresses."}, "stop")
TOOL_CALL = completion({"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_abc", "type": "function",
     "function": {"name": "text_search", "arguments": '{"query": "red dress", "k": 3}'}}]},
    "tool_calls")


def stream_chunks() -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
                "model": MODEL, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}]}

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "look."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_s1", "type": "function",
                               "function": {"name": "text_search", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"query": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"red dress"}'}}]}),
        chunk({}, "tool_calls"),
        {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
         "choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 9,
                                  "total_tokens": 51}},
    ]


class FakeServer:
    """Records each request and answers from a script of replies."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[Any] = []
        self.refuse_key: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refused(self) -> bool:
                if server.refuse_key and server.refuse_key in self.headers.get(
                        "Authorization", ""):
                    self._json(401, {"error": {"message": "bad key"}})
                    return True
                return False

            def do_GET(self) -> None:
                if self._refused():
                    return
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": MODEL, "object": "model", "owned_by": "test"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                if self._refused():
                    return
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path,
                                        "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                reply = server.replies.pop(0)
                if not body.get("stream"):
                    self._json(200, reply)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for item in reply:
                    self.wfile.write(f"data: {json.dumps(item)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plain_answer(server: FakeServer) -> None:
    server.replies.append(PLAIN)
    chat = create_chat_model(f"openai:{MODEL}", base_url=server.base_url, timeout=7,
                             max_new_tokens=64, temperature=0)
    reply = chat.invoke([SystemMessage("You are a shopping assistant."),
                         HumanMessage("a red dress")])
    assert reply.content == "Here are three red dresses."
    assert reply.usage_metadata["input_tokens"] == 42
    sent = server.requests[0]
    assert sent["headers"]["authorization"] == "Bearer none"
    body = sent["body"]
    assert body["model"] == MODEL
    assert body["messages"] == [{"role": "system", "content": "You are a shopping assistant."},
                                {"role": "user", "content": "a red dress"}]
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 64
    assert chat.request_timeout == 7 and chat.max_retries == 1


def test_tool_calls_and_the_tool_message_round_trip(server: FakeServer, shop_tools) -> None:
    server.replies += [TOOL_CALL, PLAIN]
    chat = create_chat_model(f"openai:{MODEL}", base_url=server.base_url, api_key="sk-test")
    model = chat.bind_tools(shop_tools)
    history = [HumanMessage("a red dress")]
    first = model.invoke(history)
    assert first.tool_calls == [{"name": "text_search", "args": {"query": "red dress", "k": 3},
                                 "id": "call_abc", "type": "tool_call"}]
    body = server.requests[0]["body"]
    assert [t["function"]["name"] for t in body["tools"]] == ["text_search", "product_details"]
    assert body["tools"][0]["function"]["parameters"]["required"] == ["query"]
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-test"
    history += [first, ToolMessage("3 results", tool_call_id="call_abc", name="text_search")]
    second = model.invoke(history)
    assert second.content == "Here are three red dresses."
    sent = server.requests[1]["body"]["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["function"] == {"name": "text_search",
                                                    "arguments": '{"query": "red dress", "k": 3}'}
    assert sent[2] == {"role": "tool", "content": "3 results", "tool_call_id": "call_abc"}


def test_streaming_over_sse(server: FakeServer, shop_tools) -> None:
    server.replies.append(stream_chunks())
    chat = create_chat_model(f"openai:{MODEL}", base_url=server.base_url)
    chunks = list(chat.bind_tools(shop_tools).stream("a red dress"))
    assert server.requests[0]["body"]["stream"] is True
    assert "".join(c.content for c in chunks) == "Let me look."
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"], c["id"]) for c in merged.tool_calls] == [
        ("text_search", {"query": "red dress"}, "call_s1")]


def test_check_server_lists_models(server: FakeServer) -> None:
    assert check_server(server.base_url) == [MODEL]
    assert check_server(server.base_url + "/") == [MODEL]
    assert check_server(server.base_url.removesuffix("/v1")) == []  # 404: warned, not fatal


def test_unlisted_model_is_only_a_warning(server: FakeServer, caplog) -> None:
    with caplog.at_level("WARNING"):
        create_chat_model("openai:other-model", base_url=server.base_url)
    assert "does not list model 'other-model'" in caplog.text


def test_unreachable_server_fails_fast_and_names_the_setting() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(LLMUnavailableError) as info:
        create_chat_model(f"openai:{MODEL}", base_url=url)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert url in message and "llm_base_url" in message and "SHOPASSIST_LLM_BASE_URL" in message


def test_refused_key_names_the_setting(server: FakeServer) -> None:
    server.refuse_key = "wrong"
    with pytest.raises(LLMUnavailableError, match="llm_api_key"):
        create_chat_model(f"openai:{MODEL}", base_url=server.base_url, api_key="wrong")


def test_server_gone_mid_conversation_fails_the_call_quickly(server: FakeServer) -> None:
    chat = create_chat_model(f"openai:{MODEL}", base_url=server.base_url, timeout=2,
                             max_retries=0)
    server.close()
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        chat.invoke("hello")
    assert time.monotonic() - started < 5


def test_without_check_nothing_is_contacted() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    chat = create_chat_model(f"openai:{MODEL}", base_url=url, check=False)
    assert chat.model_name == MODEL and chat.openai_api_base == url
