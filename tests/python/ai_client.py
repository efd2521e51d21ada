"""One chat call through an official SDK (openai or anthropic), for the gateway's AI
end-to-end tests. Prints one JSON line and exits 0, whatever the call's outcome.

    ai_client.py --sdk openai|anthropic --base-url URL --api-key KEY [--model M]
                 [--stream] [--include-usage] [--raw-stream] [--max-tokens N]
                 [--message TEXT] [--system TEXT] [--messages-json JSON] [--tools]
                 [--header K:V ...] [--extra-body JSON] [--connect-to IP[:PORT]]
                 [--timeout S] [--auth bearer|x-api-key]

Defaults: --model gpt-4o-mini / claude-haiku-4-5, --message "Hello there".

openai:    client.chat.completions.create (through with_raw_response, for the headers);
           base URL as given (e.g. http://gw:port/v1); stream_options={"include_usage": true}
           only with --include-usage; max_tokens only when --max-tokens is given.
anthropic: client.messages.create, or with --stream the client.messages.stream helper
           (--raw-stream: client.messages.create(stream=True), the raw events, no helper);
           the SDK appends /v1/messages to the base URL; max_tokens defaults to 1024. NB:
           anthropic 2.x sends the key as `Authorization: Bearer <key>`, not x-api-key
           (--auth x-api-key: the key in X-Api-Key only, as the 0.x/1.x SDKs sent it).
Both: max_retries=0, timeout 10 s (--timeout), --header as default_headers, and an HTTP
client of our own (trust_env off, so no proxy from the environment).

--connect-to IP[:PORT]: connect to IP (and PORT, default the URL's) whatever the URL's host
is, keeping the URL's host:port in the Host header: for base URLs such as
http://ai.localhost:8080/v1 whose name does not resolve here.

--tools: one tool, get_weather(city: string).
--messages-json: the messages array, verbatim, instead of one user --message.

Output, success:
  {"ok": true, "sdk", "stream", "id", "model", "text", "usage": {...} or null,
   "finish_reason" (openai) | "stop_reason" (anthropic), "tool_calls": [{"id", "name",
   "arguments": parsed JSON (a string if it does not parse)}], "events": stream events
   received (openai: chunks, [DONE] not counted; anthropic: raw events, ping not counted -
   the SDK drops pings) or null when not streaming, "headers": {lowercased: value}}
  usage: the SDK's usage object as a dict without null fields (openai prompt_tokens,
  completion_tokens, total_tokens; anthropic input_tokens, output_tokens), null if none.
Output, failure:
  {"ok": false, "status": HTTP status or null, "error_type": exception class name,
   "message": str(e), "body": the SDK's error body or null, "headers": response headers or
   null, "text": text received before the failure, "events": events received before it (null
   when not streaming), "unexpected": false for the SDK's and httpx2's own errors, true for
   anything else the SDK raised while reading the answer (also printed to stderr)}
"""
import argparse
import json
import os
import sys
import traceback

import httpx2

TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ANTHROPIC_RAW_EVENTS = {
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop",
}


class ConnectToTransport(httpx2.HTTPTransport):
    """Connects to a fixed address; the request's Host header (made from the URL when the
    request was built) is left as it is."""

    def __init__(self, host, port=None, **kwargs):
        super().__init__(**kwargs)
        self._host, self._port = host, port

    def handle_request(self, request):
        changes = {"host": self._host}
        if self._port is not None:
            changes["port"] = self._port
        request.url = request.url.copy_with(**changes)
        return super().handle_request(request)


def http_client(sdk_module, args):
    kwargs = {"trust_env": False}
    if args.connect_to:
        host, _, port = args.connect_to.rpartition(":") if args.connect_to.count(":") == 1 \
            else (args.connect_to, "", "")
        kwargs["transport"] = ConnectToTransport(host, int(port) if port else None,
                                                 trust_env=False)
    return sdk_module.DefaultHttpxClient(**kwargs)


def dump(obj):
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_none=True, mode="json")
    return obj


def parse_args_json(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def headers_of(response):
    if response is None:
        return None
    return {k.lower(): v for k, v in response.headers.items()}


class State:
    """What has been received so far (for a failure's partial output)."""

    def __init__(self, stream):
        self.text = ""
        self.events = 0 if stream else None
        self.headers = None


def run_openai(args, state):
    import openai

    headers = dict(args.headers)
    client = openai.OpenAI(api_key=args.api_key, base_url=args.base_url, max_retries=0,
                           timeout=args.timeout, default_headers=headers or None,
                           http_client=http_client(openai, args))
    if args.messages_json:
        messages = json.loads(args.messages_json)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": args.message}]
    kw = {"model": args.model or "gpt-4o-mini", "messages": messages}
    if args.max_tokens is not None:
        kw["max_tokens"] = args.max_tokens
    if args.tools:
        kw["tools"] = [TOOL_OPENAI]
    if args.stream:
        kw["stream"] = True
        if args.include_usage:
            kw["stream_options"] = {"include_usage": True}
    if args.extra_body:
        kw["extra_body"] = json.loads(args.extra_body)
    raw = client.chat.completions.with_raw_response.create(**kw)
    state.headers = headers_of(raw)
    out = {"ok": True, "sdk": "openai", "stream": bool(args.stream)}
    if not args.stream:
        completion = raw.parse()
        choice = completion.choices[0] if completion.choices else None
        message = choice.message if choice else None
        out.update({
            "id": completion.id, "model": completion.model,
            "text": (message.content if message else None) or "",
            "usage": dump(completion.usage),
            "finish_reason": choice.finish_reason if choice else None,
            "tool_calls": [
                {"id": call.id, "name": call.function.name,
                 "arguments": parse_args_json(call.function.arguments)}
                for call in (message.tool_calls or [])] if message else [],
            "events": None,
        })
        return out
    calls, usage, finish, ident, model = {}, None, None, None, None
    for chunk in raw.parse():
        state.events += 1
        ident, model = chunk.id or ident, chunk.model or model
        if getattr(chunk, "usage", None) is not None:
            usage = dump(chunk.usage)
        for choice in chunk.choices or []:
            delta = choice.delta
            if delta is not None and delta.content:
                state.text += delta.content
            for call in (delta.tool_calls or []) if delta is not None else []:
                slot = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    if call.function.name:
                        slot["name"] = call.function.name
                    if call.function.arguments:
                        slot["arguments"] += call.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    out.update({
        "id": ident, "model": model, "text": state.text, "usage": usage,
        "finish_reason": finish,
        "tool_calls": [dict(calls[i], arguments=parse_args_json(calls[i]["arguments"]))
                       for i in sorted(calls)],
        "events": state.events,
    })
    return out


def run_anthropic(args, state):
    import anthropic

    headers = dict(args.headers)
    api_key = args.api_key
    if args.auth == "x-api-key":
        # As the 0.x and 1.x SDKs did: the key in X-Api-Key, no Authorization header.
        headers["X-Api-Key"], api_key = args.api_key, None
    client = anthropic.Anthropic(api_key=api_key, base_url=args.base_url, max_retries=0,
                                 timeout=args.timeout, default_headers=headers or None,
                                 http_client=http_client(anthropic, args))
    if args.messages_json:
        messages = json.loads(args.messages_json)
    else:
        messages = [{"role": "user", "content": args.message}]
    kw = {"model": args.model or "claude-haiku-4-5", "messages": messages,
          "max_tokens": 1024 if args.max_tokens is None else args.max_tokens}
    if args.system:
        kw["system"] = args.system
    if args.tools:
        kw["tools"] = [TOOL_ANTHROPIC]
    if args.extra_body:
        kw["extra_body"] = json.loads(args.extra_body)
    out = {"ok": True, "sdk": "anthropic", "stream": bool(args.stream)}

    def from_message(message):
        content = getattr(message, "content", None) or []
        return {
            "id": getattr(message, "id", None), "model": getattr(message, "model", None),
            "text": "".join(b.text for b in content if b.type == "text"),
            "usage": dump(getattr(message, "usage", None)),
            "stop_reason": getattr(message, "stop_reason", None),
            "tool_calls": [{"id": b.id, "name": b.name, "arguments": b.input}
                           for b in content if b.type == "tool_use"],
        }

    if not args.stream:
        raw = client.messages.with_raw_response.create(**kw)
        state.headers = headers_of(raw)
        out.update(from_message(raw.parse()))
        out["events"] = None
        return out

    def follow(event):
        state.events += 1
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            state.text += event.delta.text

    if not args.raw_stream:
        with client.messages.stream(**kw) as stream:
            state.headers = headers_of(stream.response)
            for event in stream:
                if event.type in ANTHROPIC_RAW_EVENTS:
                    follow(event)
            out.update(from_message(stream.get_final_message()))
        out["events"] = state.events
        return out

    raw = client.messages.with_raw_response.create(stream=True, **kw)
    state.headers = headers_of(raw)
    ident = model = stop = None
    usage, blocks = None, {}
    for event in raw.parse():
        follow(event)
        if event.type == "message_start":
            ident, model = event.message.id, event.message.model
            usage = dump(getattr(event.message, "usage", None))
        elif event.type == "content_block_start":
            block = event.content_block
            blocks[event.index] = {"type": block.type, "id": getattr(block, "id", None),
                                   "name": getattr(block, "name", None), "json": ""}
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            blocks[event.index]["json"] += event.delta.partial_json
        elif event.type == "message_delta":
            stop = event.delta.stop_reason
            delta_usage = dump(getattr(event, "usage", None))
            if delta_usage:
                usage = dict(usage or {}, **delta_usage)
    out.update({
        "id": ident, "model": model, "text": state.text, "usage": usage, "stop_reason": stop,
        "tool_calls": [{"id": b["id"], "name": b["name"],
                        "arguments": parse_args_json(b["json"] or "{}")}
                       for _, b in sorted(blocks.items()) if b["type"] == "tool_use"],
        "events": state.events,
    })
    return out


def header(value):
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected K:V, got {value!r}")
    return name.strip(), val.strip()


def main():
    parser = argparse.ArgumentParser(description="one chat call through an official SDK")
    parser.add_argument("--sdk", choices=["openai", "anthropic"], required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--include-usage", action="store_true",
                        help="openai: stream_options={'include_usage': True}")
    parser.add_argument("--raw-stream", action="store_true",
                        help="anthropic: messages.create(stream=True) instead of .stream()")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--message", default="Hello there")
    parser.add_argument("--system")
    parser.add_argument("--messages-json")
    parser.add_argument("--tools", action="store_true")
    parser.add_argument("--header", dest="headers", type=header, action="append", default=[])
    parser.add_argument("--extra-body")
    parser.add_argument("--connect-to")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--auth", choices=["bearer", "x-api-key"], default="bearer",
                        help="anthropic: how the key is sent (the 2.x SDK: bearer)")
    args = parser.parse_args()
    for name in ("messages_json", "extra_body"):
        try:
            json.loads(getattr(args, name) or "null")
        except ValueError as e:
            parser.error(f"--{name.replace('_', '-')}: {e}")

    # Hermetic: no key, base URL, organization or credentials file from the environment.
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "ANTHROPIC_", "AZURE_OPENAI_")):
            del os.environ[name]

    import anthropic
    import openai

    sdk_errors = (openai.OpenAIError, anthropic.AnthropicError, httpx2.HTTPError,
                  httpx2.StreamError)
    state = State(args.stream)
    try:
        out = (run_openai if args.sdk == "openai" else run_anthropic)(args, state)
    except Exception as e:  # noqa: BLE001 - every outcome is reported as JSON
        unexpected = not isinstance(e, sdk_errors)
        if unexpected:
            traceback.print_exc(file=sys.stderr)
        response = getattr(e, "response", None)
        out = {
            "ok": False,
            "status": getattr(e, "status_code", None),
            "error_type": type(e).__name__,
            "message": str(e),
            "body": getattr(e, "body", None),
            "headers": headers_of(response) if isinstance(response, httpx2.Response)
            else state.headers,
            "text": state.text,
            "events": state.events,
            "unexpected": unexpected,
        }
    else:
        out["headers"] = state.headers
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
