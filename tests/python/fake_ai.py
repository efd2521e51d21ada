r"""A fake AI provider for the gateway's end-to-end tests: the OpenAI chat-completions API or
the Anthropic messages API, deterministic, with fault injection and a record of what it was
sent. Standard library only.

    fake_ai.py --api openai|anthropic [--port 0] [--host 127.0.0.1] [--name NAME]
               [--status CODE] [--fail-after N] [--delay-ms MS] [--latency-ms MS]
               [--models a,b] [--exit-on-stdin-eof]

Once bound it prints one line, `fake_ai ready port=<port>`, to stdout and serves (HTTP/1.1,
keep-alive) until killed; nothing else is written to stdout or stderr.

Endpoints
  openai:    POST /v1/chat/completions, and any POST path ending in /chat/completions
             (Azure: /openai/deployments/<dep>/chat/completions?api-version=...);
             GET /v1/models. Key: `Authorization: Bearer <key>` or `api-key: <key>`.
  anthropic: POST /v1/messages; GET /v1/models. Key: `x-api-key: <key>`, or
             `Authorization: Bearer <key>` (what the anthropic SDK sends since 2.0; x-api-key
             wins when both are present), and an `anthropic-version` header is required (400
             without, like the real API).
  both:      GET /_seen, GET /_usage, POST /_reset (never recorded, never fail).
A missing key is answered 401 in the API's own error shape; the key's value is not checked.

The reply
  text  = the words (whitespace-separated) of "echo: " + <last user text>, at most
          max_tokens of them (OpenAI: max_completion_tokens or max_tokens, none = no limit;
          Anthropic: max_tokens, required), joined by single spaces.
          finish_reason "stop"/"length", stop_reason "end_turn"/"max_tokens".
  last user text: OpenAI, the last message whose role is user or tool; Anthropic, the last
          user message. Its text is its string content, or its text parts/blocks (and, for
          Anthropic, tool_result contents) joined by spaces.
  tool call: when the request has `tools`, the last user text contains the word "weather"
          (any case) and is not a tool result (OpenAI role tool; Anthropic a user message
          with a tool_result block): one call to the first tool with arguments
          {"city": "Paris"}; finish_reason tool_calls / stop_reason tool_use. Its
          completion tokens are the 2 words of `{"city": "Paris"}`.
  prompt tokens = words in every message's text (string content, text parts/blocks,
          tool/tool_result contents) plus the system prompt (OpenAI system/developer
          messages, Anthropic `system`). Tool definitions and tool-call arguments do not count.
  ids: OpenAI "chatcmpl-<name>-<n>", Anthropic "msg_<name>_<n>" (n counts from 1 per fake),
          so a test can tell which fake answered; response header x-fake-name: <name>.

Streaming ("stream": true): SSE, chunked transfer encoding, one HTTP chunk per event, one
delta event per word of the reply (the word and the space after it: "echo: ", "hi ",
"there"). Every chunk is written and sent at once (TCP_NODELAY); an error status comes
before any stream, as JSON. The bytes of each event (JSON compact, ids and `created` vary),
for messages [user "hi there"]:
  openai (`usage` appears in every chunk, as null, only with include_usage):
    data: {"id":"chatcmpl-oa-2","object":"chat.completion.chunk","created":1795503272,
      "model":"m","system_fingerprint":"fp_oa","choices":[{"index":0,"delta":{"role":
      "assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],
      "usage":null}\n\n
    data: {... "choices":[{"index":0,"delta":{"content":"echo: "},"logprobs":null,
      "finish_reason":null}],"usage":null}\n\n          (then "hi ", "there")
    data: {... "choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],
      "usage":null}\n\n
    data: {... "choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,
      "total_tokens":5}}\n\n                               (only with include_usage)
    data: [DONE]\n\n
    tool call: first delta {"role":"assistant","content":null,"tool_calls":[{"index":0,
      "id":"call_oa-5","type":"function","function":{"name":"get_weather","arguments":""}}],
      "refusal":null}, then {"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": "}}]}
      and ... "\"Paris\"}", finish_reason "tool_calls".
  anthropic:
    event: message_start\ndata: {"type":"message_start","message":{"id":"msg_an_1","type":
      "message","role":"assistant","content":[],"model":"m","stop_reason":null,
      "stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":1}}}\n\n
    event: content_block_start\ndata: {"type":"content_block_start","index":0,
      "content_block":{"type":"text","text":""}}\n\n
    event: ping\ndata: {"type":"ping"}\n\n
    event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":
      {"type":"text_delta","text":"echo: "}}\n\n       (then "hi ", "there")
    event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n
    event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",
      "stop_sequence":null},"usage":{"output_tokens":3}}\n\n
    event: message_stop\ndata: {"type":"message_stop"}\n\n
    tool call: content_block {"type":"tool_use","id":"toolu_an_7","name":"get_weather",
      "input":{}}, deltas {"type":"input_json_delta","partial_json":"{\"city\": "} and
      "\"Paris\"}", stop_reason "tool_use", output_tokens 2.
  Fail-after: the stream stops after a whole event's chunk (...\n\n\r\n); no "0\r\n\r\n".
  Delta events (what fail-after and x-fake-delay-ms count) are the content/arguments ones;
  the role chunk, message_start, content_block_start and ping come first regardless.

Faults, by request header (the CLI flags of the same name apply them to every chat/messages
request; a header wins over a flag):
  x-fake-status: CODE     answer CODE (4xx/5xx) with the API's error body; 429 carries
                          retry-after: 1 (checked after the key, before the body)
  x-fake-fail-after: N    streams: after N delta events (or all, if fewer) close the
                          connection without the finish events or the terminating chunk.
                          Non-streaming requests: close without answering at all.
  x-fake-no-usage: 1      no usage anywhere (OpenAI: no usage chunk even when asked, no
                          `usage` in a non-streaming body; Anthropic: no `usage` in
                          message_start's message or in message_delta, or in the body)
  x-fake-delay-ms: MS     sleep MS before each delta event of a stream
  x-fake-latency-ms: MS   sleep MS before answering at all (headers included)

Record
  GET /_seen  -> [{"n", "method", "path", "query", "headers": {lowercased name: value, repeats
                 joined by ", "}, "header_list": [[name, value], ...], "body": JSON or null,
                 "body_raw": text when the body is not JSON (else null), "key", "auth":
                 "bearer"|"api-key"|"x-api-key"|null (where the key was found), "stream":
                 bool, "model": body's model or null, "status": answered status or null, "outcome":
                 "completed"|"aborted"|"cancelled"|"dropped"|"error"|null (null: not a
                 chat/messages request, or still being answered), "usage":
                 {"prompt_tokens", "completion_tokens"} planned, or null}, ...] in arrival order
  GET /_usage -> {"requests", "completed", "errors", "prompt_tokens", "completion_tokens",
                 "streams_completed", "streams_aborted", "streams_cancelled",
                 "aborted_prompt_tokens", "aborted_completion_tokens",
                 "aborted_completion_tokens_sent", "dropped"}
                 requests: chat/messages requests received; completed: answered in full
                 (non-streaming 200s and completed streams), whose planned usage (reported, or
                 that would have been with x-fake-no-usage) is summed in prompt_tokens and
                 completion_tokens; errors: answered with an error status; streams_aborted:
                 cut by fail-after, their full planned usage in aborted_*_tokens and the
                 words actually sent in aborted_completion_tokens_sent; streams_cancelled: the
                 client went away mid-stream; dropped: non-streaming requests closed unanswered.
  POST /_reset clears both (and the id counter).
"""
import argparse
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CONFIG = argparse.Namespace()
LOCK = threading.Lock()
SEEN = []
COUNTER = [0]


def new_usage():
    return {
        "requests": 0,
        "completed": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "streams_completed": 0,
        "streams_aborted": 0,
        "streams_cancelled": 0,
        "aborted_prompt_tokens": 0,
        "aborted_completion_tokens": 0,
        "aborted_completion_tokens_sent": 0,
        "dropped": 0,
    }


USAGE = new_usage()

TOOL_ARGS = {"city": "Paris"}
TOOL_ARGS_JSON = json.dumps(TOOL_ARGS)  # '{"city": "Paris"}': 2 words

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def words(text):
    return text.split() if isinstance(text, str) else []


def count_words(text):
    return len(words(text))


# ---------------------------------------------------------------- request interpretation


def openai_part_text(content):
    """Text of an OpenAI message content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(part.get("text") or "")
            elif isinstance(part, str):
                texts.append(part)
        return " ".join(texts)
    return ""


def anthropic_block_text(content):
    """Text of Anthropic content: a string, or blocks (text, and tool_result contents)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                texts.append(block.get("text") or "")
            elif block.get("type") == "tool_result":
                texts.append(anthropic_block_text(block.get("content")))
        return " ".join(texts)
    return ""


def plan_openai(body, path):
    """Returns (plan, error): plan is a dict describing the answer; error (status, message)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, (400, "'messages' is a required property and must be a non-empty array")
    model = body.get("model")
    if not model:
        m = re.search(r"/deployments/([^/]+)/", path)
        if not m:
            return None, (400, "you must provide a model parameter")
        model = m.group(1)
    prompt = 0
    last_text, last_is_tool = "", False
    for message in messages:
        if not isinstance(message, dict):
            return None, (400, "each message must be an object")
        text = openai_part_text(message.get("content"))
        prompt += count_words(text)
        if message.get("role") in ("user", "tool"):
            last_text, last_is_tool = text, message.get("role") == "tool"
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    tools = body.get("tools") or []
    tool = None
    if tools and not last_is_tool and re.search(r"\bweather\b", last_text, re.I):
        first = tools[0] if isinstance(tools[0], dict) else {}
        tool = (first.get("function") or {}).get("name") or first.get("name") or "tool"
    stream = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return make_plan(model, prompt, last_text, max_tokens, tool, stream, include_usage), None


def plan_anthropic(body):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, (400, "messages: Field required")
    model = body.get("model")
    if not model:
        return None, (400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int):
        return None, (400, "max_tokens: Field required")
    prompt = count_words(anthropic_block_text(body.get("system")))
    last_text, last_is_tool = "", False
    for message in messages:
        if not isinstance(message, dict):
            return None, (400, "messages: each message must be an object")
        content = message.get("content")
        text = anthropic_block_text(content)
        prompt += count_words(text)
        if message.get("role") == "user":
            last_text = text
            last_is_tool = isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    tools = body.get("tools") or []
    tool = None
    if tools and not last_is_tool and re.search(r"\bweather\b", last_text, re.I):
        first = tools[0] if isinstance(tools[0], dict) else {}
        tool = first.get("name") or "tool"
    return make_plan(model, prompt, last_text, max_tokens, tool, bool(body.get("stream")),
                     True), None


def make_plan(model, prompt, last_text, max_tokens, tool, stream, include_usage):
    if tool:
        pieces = with_spaces(words(TOOL_ARGS_JSON))  # '{"city": ', '"Paris"}'
        return {
            "model": model, "prompt": prompt, "completion": len(pieces), "tool": tool,
            "pieces": pieces, "text": None, "truncated": False, "stream": stream,
            "include_usage": include_usage,
        }
    reply = words("echo: " + (last_text or ""))
    truncated = False
    if isinstance(max_tokens, int) and max_tokens >= 0 and len(reply) > max_tokens:
        reply, truncated = reply[:max_tokens], True
    return {
        "model": model, "prompt": prompt, "completion": len(reply), "tool": None,
        "pieces": with_spaces(reply), "text": " ".join(reply), "truncated": truncated,
        "stream": stream, "include_usage": include_usage,
    }


def with_spaces(ws):
    return [w + " " if i + 1 < len(ws) else w for i, w in enumerate(ws)]


# ---------------------------------------------------------------- bodies


def openai_error(status, message=None):
    kind, code, default = OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None,
                 f"Error {status}."))
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


ANTHROPIC_MESSAGES = {
    429: "This request would exceed the rate limit for your organization. Please try again "
         "later.",
    500: "Internal server error",
    529: "Overloaded",
}


def anthropic_error(status, message=None):
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500
                                     else "invalid_request_error")
    message = message or ANTHROPIC_MESSAGES.get(status) or f"Error {status}."
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_body(plan, rid, no_usage):
    if plan["tool"]:
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{
            "id": f"call_{rid}", "type": "function",
            "function": {"name": plan["tool"], "arguments": TOOL_ARGS_JSON}}]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": plan["text"], "refusal": None}
        finish = "length" if plan["truncated"] else "stop"
    body = {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
        "model": plan["model"], "system_fingerprint": f"fp_{CONFIG.name}",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
    }
    if not no_usage:
        body["usage"] = openai_usage(plan)
    return body


def openai_usage(plan):
    return {"prompt_tokens": plan["prompt"], "completion_tokens": plan["completion"],
            "total_tokens": plan["prompt"] + plan["completion"]}


def anthropic_body(plan, rid, no_usage):
    if plan["tool"]:
        content = [{"type": "tool_use", "id": f"toolu_{rid}", "name": plan["tool"],
                    "input": TOOL_ARGS}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": plan["text"]}]
        stop = "max_tokens" if plan["truncated"] else "end_turn"
    body = {"id": f"msg_{rid}", "type": "message", "role": "assistant",
            "model": plan["model"], "content": content, "stop_reason": stop,
            "stop_sequence": None}
    if not no_usage:
        body["usage"] = {"input_tokens": plan["prompt"], "output_tokens": plan["completion"]}
    return body


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


def sse_openai(plan, rid, no_usage):
    """Yields (kind, bytes): kind "delta" for the events fail-after counts, "head"/"tail"
    for the others."""
    include_usage = plan["include_usage"] and not no_usage
    base = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": plan["model"],
            "system_fingerprint": f"fp_{CONFIG.name}"}

    def chunk(delta, finish=None):
        c = dict(base)
        c["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if include_usage:
            c["usage"] = None
        return b"data: " + dumps(c).encode() + b"\n\n"

    if plan["tool"]:
        yield "head", chunk({"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": f"call_{rid}", "type": "function",
            "function": {"name": plan["tool"], "arguments": ""}}], "refusal": None})
        for piece in plan["pieces"]:
            yield "delta", chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        finish = "tool_calls"
    else:
        yield "head", chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in plan["pieces"]:
            yield "delta", chunk({"content": piece})
        finish = "length" if plan["truncated"] else "stop"
    yield "tail", chunk({}, finish)
    if include_usage:
        c = dict(base)
        c["choices"] = []
        c["usage"] = openai_usage(plan)
        yield "tail", b"data: " + dumps(c).encode() + b"\n\n"
    yield "tail", b"data: [DONE]\n\n"


def sse_anthropic(plan, rid, no_usage):
    def event(name, data):
        return b"event: " + name.encode() + b"\ndata: " + dumps(data).encode() + b"\n\n"

    message = {"id": f"msg_{rid}", "type": "message", "role": "assistant", "content": [],
               "model": plan["model"], "stop_reason": None, "stop_sequence": None}
    if not no_usage:
        message["usage"] = {"input_tokens": plan["prompt"], "output_tokens": 1}
    yield "head", event("message_start", {"type": "message_start", "message": message})
    if plan["tool"]:
        block = {"type": "tool_use", "id": f"toolu_{rid}", "name": plan["tool"], "input": {}}
        delta_type, field = "input_json_delta", "partial_json"
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta_type, field = "text_delta", "text"
        stop = "max_tokens" if plan["truncated"] else "end_turn"
    yield "head", event("content_block_start",
                        {"type": "content_block_start", "index": 0, "content_block": block})
    yield "head", event("ping", {"type": "ping"})
    for piece in plan["pieces"]:
        yield "delta", event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": delta_type, field: piece}})
    yield "tail", event("content_block_stop", {"type": "content_block_stop", "index": 0})
    delta = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
    if not no_usage:
        delta["usage"] = {"output_tokens": plan["completion"]}
    yield "tail", event("message_delta", delta)
    yield "tail", event("message_stop", {"type": "message_stop"})


# ---------------------------------------------------------------- server


class Dropped(Exception):
    """The fake closed the connection on purpose."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake_ai"
    sys_version = ""

    def version_string(self):
        return "fake_ai"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - silent: nobody reads stderr
        pass

    # -- plumbing

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status, value, extra=()):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_common_headers()
        for name, val in extra:
            self.send_header(name, val)
        self.end_headers()
        self.wfile.write(data)

    def send_common_headers(self):
        self.send_header("x-fake-name", CONFIG.name)
        rid = getattr(self, "rid", None)
        if rid is not None:
            if CONFIG.api == "anthropic":
                self.send_header("request-id", f"req_{rid}")
            else:
                self.send_header("x-request-id", f"req_{rid}")

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def drop(self):
        """Closes the connection at once: no more bytes, not even a terminating chunk."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Dropped()

    def fake(self, name, flag):
        value = self.headers.get(name)
        if value is None:
            return flag
        return value

    # -- dispatch

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method):
        try:
            self.route(method)
        except Dropped:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def route(self, method):
        self.rid = None
        url = urlsplit(self.path)
        path = url.path
        raw = self.read_body()
        if path == "/_seen" and method == "GET":
            with LOCK:
                return self.send_json(200, SEEN)
        if path == "/_usage" and method == "GET":
            with LOCK:
                return self.send_json(200, USAGE)
        if path == "/_reset" and method == "POST":
            with LOCK:
                SEEN.clear()
                USAGE.update(new_usage())
                COUNTER[0] = 0
            return self.send_json(200, {"ok": True})

        try:
            body = json.loads(raw) if raw else None
            body_raw = None
        except ValueError:
            body, body_raw = None, raw.decode("utf-8", "replace")
        headers, header_list = {}, []
        for name, value in self.headers.items():
            name = name.lower()
            header_list.append([name, value])
            headers[name] = headers[name] + ", " + value if name in headers else value
        key, auth = None, None
        authz = self.headers.get("Authorization") or ""
        if CONFIG.api == "anthropic" and self.headers.get("x-api-key"):
            key, auth = self.headers.get("x-api-key"), "x-api-key"
        elif authz[:7].lower() == "bearer " and authz[7:].strip():
            key, auth = authz[7:].strip(), "bearer"
        elif CONFIG.api == "openai" and self.headers.get("api-key"):
            key, auth = self.headers.get("api-key"), "api-key"

        is_chat = method == "POST" and (
            (CONFIG.api == "openai" and path.endswith("/chat/completions"))
            or (CONFIG.api == "anthropic" and path == "/v1/messages"))
        record = {
            "n": None, "method": method, "path": path, "query": url.query,
            "headers": headers, "header_list": header_list, "body": body,
            "body_raw": body_raw, "key": key, "auth": auth,
            "stream": bool(isinstance(body, dict) and body.get("stream")),
            "model": body.get("model") if isinstance(body, dict) else None,
            "status": None, "outcome": None, "usage": None,
        }
        with LOCK:
            SEEN.append(record)
            record["n"] = len(SEEN)
            if is_chat:
                USAGE["requests"] += 1
                COUNTER[0] += 1
                self.rid = f"{CONFIG.name}-{COUNTER[0]}" if CONFIG.api == "openai" \
                    else f"{CONFIG.name}_{COUNTER[0]}"

        latency = int(self.fake("x-fake-latency-ms", CONFIG.latency_ms) or 0)
        if latency:
            time.sleep(latency / 1000)

        def fail(status, message=None, extra=()):
            body = openai_error(status, message) if CONFIG.api == "openai" \
                else anthropic_error(status, message)
            record["status"] = status
            if is_chat:
                record["outcome"] = "error"
                with LOCK:
                    USAGE["errors"] += 1
            self.send_json(status, body, extra)

        if not is_chat and not (method == "GET" and path == "/v1/models"):
            return fail(404, f"Unknown request URL: {method} {path}.")
        if key is None:
            if CONFIG.api == "openai":
                return fail(401, "You didn't provide an API key. You need to provide your API "
                                 "key in an Authorization header using Bearer auth (i.e. "
                                 "Authorization: Bearer YOUR_KEY).")
            return fail(401, "x-api-key or Authorization header is required")
        if CONFIG.api == "anthropic" and not self.headers.get("anthropic-version"):
            return fail(400, "anthropic-version: header is required")
        if not is_chat:
            record["status"] = 200
            models = [m for m in CONFIG.models.split(",") if m]
            if CONFIG.api == "openai":
                data = {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": CONFIG.name}
                    for m in models]}
            else:
                data = {"data": [{"type": "model", "id": m, "display_name": m,
                                  "created_at": "2025-01-01T00:00:00Z"} for m in models],
                        "has_more": False, "first_id": models[0] if models else None,
                        "last_id": models[-1] if models else None}
            return self.send_json(200, data)

        status = int(self.fake("x-fake-status", CONFIG.status) or 200)
        if status >= 400:
            return fail(status, None, [("retry-after", "1")] if status == 429 else [])
        if not isinstance(body, dict):
            return fail(400, "We could not parse the JSON body of your request.")
        if CONFIG.api == "openai":
            plan, err = plan_openai(body, path)
        else:
            plan, err = plan_anthropic(body)
        if err:
            return fail(*err)
        record["usage"] = {"prompt_tokens": plan["prompt"],
                           "completion_tokens": plan["completion"]}
        no_usage = self.fake("x-fake-no-usage", None) not in (None, "", "0")
        fail_after = self.fake("x-fake-fail-after", CONFIG.fail_after)
        fail_after = None if fail_after in (None, "") else int(fail_after)

        if not plan["stream"]:
            if fail_after is not None:
                record["outcome"] = "dropped"
                with LOCK:
                    USAGE["dropped"] += 1
                self.drop()
            make = openai_body if CONFIG.api == "openai" else anthropic_body
            record["status"] = 200
            self.send_json(200, make(plan, self.rid, no_usage))
            record["outcome"] = "completed"
            self.count_completed(plan, stream=False)
            return

        delay = int(self.fake("x-fake-delay-ms", CONFIG.delay_ms) or 0)
        events = (sse_openai if CONFIG.api == "openai" else sse_anthropic)(
            plan, self.rid, no_usage)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_common_headers()
        self.end_headers()
        record["status"] = 200
        sent = 0
        try:
            for kind, data in events:
                if kind == "delta":
                    if fail_after is not None and sent >= fail_after:
                        break
                    if delay:
                        time.sleep(delay / 1000)
                    sent += 1
                elif kind == "tail" and fail_after is not None:
                    break
                self.write_chunk(data)
            if fail_after is not None:
                record["outcome"] = "aborted"
                with LOCK:
                    USAGE["streams_aborted"] += 1
                    USAGE["aborted_prompt_tokens"] += plan["prompt"]
                    USAGE["aborted_completion_tokens"] += plan["completion"]
                    USAGE["aborted_completion_tokens_sent"] += sent
                self.drop()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            record["outcome"] = "cancelled"
            with LOCK:
                USAGE["streams_cancelled"] += 1
            raise
        record["outcome"] = "completed"
        self.count_completed(plan, stream=True)

    def count_completed(self, plan, stream):
        with LOCK:
            USAGE["completed"] += 1
            USAGE["prompt_tokens"] += plan["prompt"]
            USAGE["completion_tokens"] += plan["completion"]
            if stream:
                USAGE["streams_completed"] += 1


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description="fake OpenAI / Anthropic provider")
    parser.add_argument("--api", choices=["openai", "anthropic"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default=None, help="in ids and x-fake-name (default: api)")
    parser.add_argument("--status", type=int, default=None,
                        help="answer every chat/messages request with this status")
    parser.add_argument("--fail-after", type=int, default=None,
                        help="cut every stream after N deltas; drop non-streaming requests")
    parser.add_argument("--delay-ms", type=int, default=0, help="default x-fake-delay-ms")
    parser.add_argument("--latency-ms", type=int, default=0, help="default x-fake-latency-ms")
    parser.add_argument("--models", default=None, help="comma-separated, for GET /v1/models")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when stdin closes (the parent died)")
    args = parser.parse_args(namespace=CONFIG)
    if args.name is None:
        args.name = args.api
    if args.models is None:
        args.models = "gpt-4o-mini,gpt-4o" if args.api == "openai" \
            else "claude-haiku-4-5,claude-sonnet-4-6"
    server = Server((args.host, args.port), Handler)
    print(f"fake_ai ready port={server.server_address[1]}", flush=True)
    if args.exit_on_stdin_eof:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        sys.stdin.read()
        return
    server.serve_forever()


if __name__ == "__main__":
    main()
