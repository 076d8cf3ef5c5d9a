"""The bodies scripts/malformed_http.py sends: per route, structural and
byte-level damage, HTTP oddities, every field with every odd value, and
hand-written cases for each API (messages, tools, JSON schemas, input
items, content blocks), drawn with a seed."""

import json
import random
from dataclasses import dataclass

from reliability_common import MODEL

BODY_LIMIT = 4 << 20  # crates/ember-gateway/src/config.rs: max_body_bytes
ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
          "/v1/messages/count_tokens", "/generate", "/tokenize", "/detokenize"]


# --------------------------------------------------------------------------
# JSON with holes: raw byte snippets (NaN, 1e999, invalid UTF-8) inside values


class Raw:
    """Bytes spliced verbatim into an encoded body."""

    def __init__(self, data: bytes):
        self.data = data

    def __repr__(self):
        return f"Raw({self.data[:40]!r})"


def encode(v) -> bytes:
    if isinstance(v, Raw):
        return v.data
    if isinstance(v, dict):
        return b"{" + b",".join(encode(str(k)) + b":" + encode(x) for k, x in v.items()) + b"}"
    if isinstance(v, (list, tuple)):
        return b"[" + b",".join(encode(x) for x in v) + b"]"
    return json.dumps(v, allow_nan=True).encode()


def nested(depth: int, leaf=1, key=None):
    """`depth` levels of lists (or of {key: ...} objects) around `leaf`."""
    v = leaf
    for _ in range(depth):
        v = {key: v} if key else [v]
    return v


BAD_UTF8 = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"abc\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80"]

# Values any field may get.
ODD_VALUES = [
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
    1.5, -0.0, 1e-40, 1e-45, 5e-324, 1e-300, 3.5e38, 1e39, 1e308, "", "abc", "1", "NaN", "\u0000", "\ud800",
    "\U0001F600" * 3, [], [1], [None], {}, {"a": 1}, "x" * 100_000,
    Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"nan"), Raw(b"1e999"), Raw(b"-1e999"), Raw(b"01"),
    Raw(b"1."), Raw(b".5"), Raw(b"+1"), Raw(b"0x10"), Raw(b"-0"), Raw(b"1E+2"), Raw(b'"\\ud800\\udc00"'),
    Raw(b'"\\uZZZZ"'), Raw(b'"\xff\xfe"'), Raw(b"undefined"), Raw(b"'single'"),
]

# Values float sampling fields always get (the known trouble makers).
FLOAT_MUST = [1e-40, 1e-45, 5e-324, 1e-38, 1e39, -1e-40, Raw(b"NaN"), Raw(b"Infinity"), Raw(b"1e999"), -0.0]
INT_MUST = [0, -1, 1000, 2**63, 2**64, 10**10, 1.5]

FLOAT_FIELDS = ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]
SAMPLING = FLOAT_FIELDS + ["top_k", "n", "stop", "seed", "stream", "stream_options", "user", "ignore_eos", "stop_token_ids"]

BASES = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/completions": {"model": MODEL, "prompt": "Hello", "max_tokens": 4},
    "/v1/embeddings": {"model": MODEL, "input": "Hello"},
    "/v1/responses": {"model": MODEL, "input": "Hi", "max_output_tokens": 4},
    "/v1/messages": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/messages/count_tokens": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    "/generate": {"prompt": "Hello", "max_tokens": 4},
    "/tokenize": {"prompt": "Hello"},
    "/detokenize": {"tokens": [1, 2, 3]},
}

FIELDS = {
    "/v1/chat/completions": ["model", "messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs",
                             "tools", "tool_choice", "parallel_tool_calls", "response_format", *SAMPLING],
    "/v1/completions": ["model", "prompt", "max_tokens", "logprobs", "echo", "suffix", "best_of", *SAMPLING],
    "/v1/embeddings": ["model", "input", "encoding_format", "dimensions", "user"],
    "/v1/responses": ["model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
                      "max_output_tokens", "temperature", "top_p", "metadata", "store", "stream", "previous_response_id",
                      "user", "include", "reasoning", "background", "truncation"],
    "/v1/messages": ["model", "max_tokens", "messages", "system", "tools", "tool_choice", "temperature", "top_p", "top_k",
                     "stop_sequences", "stream", "metadata", "thinking", "output_config"],
    "/v1/messages/count_tokens": ["model", "messages", "system", "tools", "tool_choice"],
    "/generate": ["prompt", "max_tokens", *SAMPLING],
    "/tokenize": ["model", "prompt", "messages", "tools", "add_special_tokens", "add_generation_prompt"],
    "/detokenize": ["model", "tokens"],
}


@dataclass
class Case:
    route: str
    label: str
    body: bytes
    content_type: str | None = "application/json"
    chunked: bool = False
    must: bool = False  # preferred when fewer bodies than the pool are asked for
    slow: bool = False  # many seconds of generation: left out of --quick runs
    method: str = "POST"


def with_fields(route, **changes):
    body = dict(BASES[route])
    for k, v in changes.items():
        if v is DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


DROP = object()


def case(route, label, obj, must=False) -> Case:
    return Case(route, label, encode(obj), must=must)


# --------------------------------------------------------------------------
# Generators


def structural_cases(route) -> list[Case]:
    """Bodies that are not a JSON object, or barely."""
    base = encode(BASES[route])
    raw = [
        ("empty body", b""), ("null", b"null"), ("array", b"[]"), ("number", b"5"), ("string", b'"hi"'),
        ("truncated", base[: len(base) // 2]), ("trailing garbage", base + b"xyz"), ("two objects", base + base),
        ("BOM", b"\xef\xbb\xbf" + base), ("comment", b"/* c */" + base), ("single quotes", base.replace(b'"', b"'")),
        ("NaN top level", b"NaN"), ("unquoted keys", b"{model: 1}"), ("duplicate keys", base[:-1] + b',"model":"' + MODEL.encode() + b'"}'),
        ("nul bytes", b"\x00" * 64), ("whitespace only", b" \n\t "),
        ("deep list 100000", b"[" * 100_000 + b"]" * 100_000), ("deep object 5000", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    ]
    cases = [Case(route, f"structure: {label}", body, must=label.startswith("deep")) for label, body in raw]
    for i, bad in enumerate(BAD_UTF8):
        in_value = base.replace(b"Hi", bad).replace(b"Hello", bad)
        if in_value == base:  # no string in the base body: add one
            in_value = base[:-1] + b',"model":"' + bad + b'"}'
        cases.append(Case(route, f"invalid UTF-8 #{i} in a value", in_value, must=i < 2))
        cases.append(Case(route, f"invalid UTF-8 #{i} in a key", base[:-1] + b',"' + bad + b'":1}'))
    cases.append(Case(route, "invalid UTF-8 as the whole body", bytes(range(128, 256))))
    return cases


def http_cases(route) -> list[Case]:
    """Content types, chunked bodies, bodies over the server's limit."""
    base = encode(BASES[route])
    big = encode(with_fields(route, prompt="x " * (BODY_LIMIT // 2 + 1000))) if route != "/v1/chat/completions" else \
        encode(with_fields(route, messages=[{"role": "user", "content": "x " * (BODY_LIMIT // 2 + 1000)}]))
    return [
        Case(route, "http: no Content-Type", base, content_type=None),
        Case(route, "http: text/plain", base, content_type="text/plain"),
        Case(route, "http: form", b"a=1&b=2", content_type="application/x-www-form-urlencoded"),
        Case(route, "http: json; charset=latin-1", base, content_type="application/json; charset=latin-1"),
        Case(route, "http: chunked body", base, chunked=True),
        Case(route, f"http: {len(big)} bytes with Content-Length (limit {BODY_LIMIT})", big, must=True),
        Case(route, f"http: {len(big)} bytes chunked (limit {BODY_LIMIT})", big, chunked=True, must=True),
        Case(route, "http: GET with a body", base, method="GET"),
        Case(route, "http: PUT", base, method="PUT"),
    ]


def field_cases(route, rng: random.Random) -> list[Case]:
    """One field at a time: missing, and every odd value; the must-values for sampling floats."""
    cases = []
    for f in FIELDS[route]:
        if f in BASES[route]:
            cases.append(case(route, f"missing {f}", with_fields(route, **{f: DROP}), must=True))
            # /generate's default is 128 tokens: seconds of decoding.
            cases[-1].slow = route == "/generate" and f == "max_tokens"
        for v in ODD_VALUES:
            cases.append(case(route, f"{f} = {short(v)}", with_fields(route, **{f: v})))
        if f in FLOAT_FIELDS:
            cases += [case(route, f"{f} = {short(v)}", with_fields(route, **{f: v}), must=True) for v in FLOAT_MUST]
        if f in ("n", "top_k", "max_tokens", "max_completion_tokens", "top_logprobs", "logprobs", "best_of", "seed"):
            cases += [case(route, f"{f} = {short(v)}", with_fields(route, **{f: v}), must=f in ("n", "max_tokens")) for v in INT_MUST]
    cases.append(case(route, "unknown field", with_fields(route, frobnicate=1), must=True))
    return cases


def combo_cases(route, rng: random.Random, count: int) -> list[Case]:
    """Random bodies changing 2 to 4 fields at once."""
    cases = []
    for i in range(count):
        changes = {f: rng.choice(ODD_VALUES + FLOAT_MUST) for f in rng.sample(FIELDS[route], min(len(FIELDS[route]), rng.randint(2, 4)))}
        cases.append(case(route, "combo " + ", ".join(f"{k}={short(v)}" for k, v in changes.items()), with_fields(route, **changes)))
    return cases


MESSAGE_CASES = [
    ("no messages", []), ("messages null", None), ("messages a string", "hi"), ("empty message", [{}]),
    ("no content", [{"role": "user"}]), ("content null", [{"role": "user", "content": None}]),
    ("role function", [{"role": "function", "content": "x"}]), ("role empty", [{"role": "", "content": "x"}]),
    ("role USER", [{"role": "USER", "content": "x"}]), ("role a number", [{"role": 5, "content": "x"}]),
    ("role null", [{"role": None, "content": "x"}]), ("role with space", [{"role": "user ", "content": "x"}]),
    ("tool without tool_call_id", [{"role": "tool", "content": "x"}]),
    ("tool with tool_call_id", [{"role": "user", "content": "x"}, {"role": "tool", "content": "42", "tool_call_id": "c1"}]),
    ("user with tool_calls", [{"role": "user", "content": "x", "tool_calls": []}]),
    ("tool_calls a string", [{"role": "assistant", "tool_calls": "x"}, {"role": "user", "content": "x"}]),
    ("tool_calls [1]", [{"role": "assistant", "tool_calls": [1]}, {"role": "user", "content": "x"}]),
    ("tool_calls no name", [{"role": "assistant", "tool_calls": [{"function": {}}]}]),
    ("tool_calls name 5", [{"role": "assistant", "tool_calls": [{"function": {"name": 5}}]}]),
    ("tool_calls bad arguments", [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]),
    ("tool_calls arguments 5", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 5}}]}]),
    ("tool_calls arguments object", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}, {"role": "user", "content": "x"}]),
    ("parts empty", [{"role": "user", "content": []}]), ("part without text", [{"role": "user", "content": [{"type": "text"}]}]),
    ("part text 5", [{"role": "user", "content": [{"type": "text", "text": 5}]}]),
    ("image part", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
    ("audio part", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
    ("part without type", [{"role": "user", "content": [{"text": "hi"}]}]),
    ("part extra key", [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]}]),
    ("parts nested", [{"role": "user", "content": [[{"type": "text", "text": "hi"}]]}]),
    ("content 5", [{"role": "user", "content": 5}]), ("content object", [{"role": "user", "content": {"a": 1}}]),
    ("message unknown key", [{"role": "user", "content": "x", "foo": 1}]), ("name 5", [{"role": "user", "content": "x", "name": 5}]),
    ("1025 messages", [{"role": "user", "content": "x"}] * 1025),
    ("long content (context)", [{"role": "user", "content": "word " * 20000}]),
    ("only assistant", [{"role": "assistant", "content": "x"}]), ("only system", [{"role": "system", "content": "x"}]),
    ("developer", [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "x"}]),
    ("refusal replay", [{"role": "assistant", "content": None, "refusal": "no"}, {"role": "user", "content": "x"}]),
    ("messages deep", nested(200)),
]

FN = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOL_CASES = [
    ("tools a string", "x"), ("tools empty", []), ("tool empty", [{}]), ("tool without function", [{"type": "function"}]),
    ("function empty", [{"type": "function", "function": {}}]), ("function name only", [{"type": "function", "function": {"name": "f"}}]),
    ("parameters 5", [{"type": "function", "function": {"name": "f", "parameters": 5}}]),
    ("parameters bogus type", [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]),
    ("parameters recursive $ref", [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}}}]),
    ("parameters dangling $ref", [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}}}]),
    ("parameters bad regex", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}}}}]),
    ("parameters deep", [{"type": "function", "function": {"name": "f", "parameters": nested(100, {"type": "object"}, "properties")}}]),
    ("name with spaces", [{"type": "function", "function": {**FN, "name": "get weather!"}}]),
    ("duplicate names", [{"type": "function", "function": FN}] * 2),
    ("500 tools", [{"type": "function", "function": {**FN, "name": f"f{i}"}} for i in range(500)]),
    ("type retrieval", [{"type": "retrieval"}]), ("valid tool", [{"type": "function", "function": FN}]),
    ("huge enum", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"enum": list(range(5000))}}}}}]),
]
TOOL_CHOICE_CASES = ["required", "none", "auto", "bogus", 5, {"type": "function"}, {"type": "function", "function": {"name": "missing"}},
                     {"type": "function", "function": {"name": "get_weather"}}, {"type": "bogus", "function": {"name": "get_weather"}}]


def schema_format(schema, name="x", **extra):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, **extra}}


RESPONSE_FORMATS = [
    ("text", {"type": "text"}), ("json_object", {"type": "json_object"}), ("type yaml", {"type": "yaml"}), ("a string", "json"),
    ("json_object extra key", {"type": "json_object", "schema": {}}), ("json_schema missing", {"type": "json_schema"}),
    ("no name", {"type": "json_schema", "json_schema": {"schema": {}}}), ("bad name", schema_format({}, name="bad name!")),
    ("65-char name", schema_format({}, name="n" * 65)), ("strict yes", schema_format({}, strict="yes")),
    ("unknown key", {"type": "json_schema", "json_schema": {"name": "x", "shema": {}}}),
    ("schema 5", schema_format(5)), ("schema false", schema_format(False)), ("schema true", schema_format(True)),
    ("schema list", schema_format([])), ("bogus type", schema_format({"type": "bogus"})),
    ("dangling $ref", schema_format({"$ref": "#/nope"})),
    ("recursive $ref", schema_format({"$ref": "#/$defs/a", "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}})),
    ("bad regex", schema_format({"type": "string", "pattern": "(["})),
    ("minLength 1e6", schema_format({"type": "string", "minLength": 1_000_000})),
    ("minItems 1e5", schema_format({"type": "array", "minItems": 100_000})),
    ("min > max", schema_format({"type": "integer", "minimum": 5, "maximum": 1})),
    ("unsatisfiable object", schema_format({"type": "object", "properties": {}, "required": ["a"], "additionalProperties": False})),
    ("allOf string+integer", schema_format({"allOf": [{"type": "string"}, {"type": "integer"}]})),
    ("not {}", schema_format({"not": {}})), ("deep schema", schema_format(nested(100, {"type": "object"}, "properties"))),
    ("unknown keyword", schema_format({"type": "object", "frobnicate": True})),
    ("format email", schema_format({"type": "string", "format": "email"})),
    ("huge enum", schema_format({"enum": [f"v{i}" for i in range(5000)]})),
    ("valid small", schema_format({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]})),
]


def chat_cases() -> list[Case]:
    r = "/v1/chat/completions"
    out = [case(r, f"messages: {label}", with_fields(r, messages=m), must=True) for label, m in MESSAGE_CASES]
    out += [case(r, f"tools: {label}", with_fields(r, tools=t), must=True) for label, t in TOOL_CASES]
    out += [case(r, f"tool_choice {short(c)}", with_fields(r, tools=[{"type": "function", "function": FN}], tool_choice=c)) for c in TOOL_CHOICE_CASES]
    out += [case(r, f"tool_choice {short(c)} without tools", with_fields(r, tool_choice=c)) for c in TOOL_CHOICE_CASES[:4]]
    out += [case(r, f"response_format: {label}", with_fields(r, response_format=f), must=True) for label, f in RESPONSE_FORMATS]
    out += [case(r, f"response_format {label}, streamed", with_fields(r, response_format=f, stream=True)) for label, f in RESPONSE_FORMATS[-3:]]
    misc = [
        ("n 16 max_tokens 8", dict(n=16, max_tokens=8)), ("n 17", dict(n=17)), ("n 1000", dict(n=1000)), ("n 0", dict(n=0)),
        ("max_tokens 1e9", dict(max_tokens=10**9)), ("max_tokens 2^63", dict(max_tokens=2**63)),
        ("both max_tokens", dict(max_tokens=4, max_completion_tokens=10**9)),
        ("top_logprobs 21", dict(logprobs=True, top_logprobs=21)), ("top_logprobs 20", dict(logprobs=True, top_logprobs=20)),
        ("top_logprobs without logprobs", dict(top_logprobs=3)),
        ("17 stops", dict(stop=[str(i) for i in range(17)])), ("stop empty string", dict(stop="")), ("stop [\"\"]", dict(stop=[""])),
        ("stop [5]", dict(stop=[5])), ("stop 100k", dict(stop="y" * 100_000)), ("stop NUL", dict(stop=["\u0000"])),
        ("include_usage without stream", dict(stream_options={"include_usage": True})),
        ("continuous_usage_stats", dict(stream=True, stream_options={"continuous_usage_stats": True})),
        ("stream_options unknown key", dict(stream=True, stream_options={"foo": 1})),
        ("stream with usage", dict(stream=True, stream_options={"include_usage": True})),
        ("stop_token_ids [-1]", dict(stop_token_ids=[-1])), ("stop_token_ids [2^32]", dict(stop_token_ids=[2**32])),
        ("stop_token_ids [1e9]", dict(stop_token_ids=[10**9])),
        ("logit_bias", dict(logit_bias={"1": 5})), ("functions", dict(functions=[FN])), ("store true", dict(store=True)),
        ("store false", dict(store=False)), ("metadata", dict(metadata={"a": "b"})), ("audio", dict(audio={})),
        ("model wrong", dict(model="gpt-4")), ("model empty", dict(model="")),
        ("temperature 1e-40 streamed", dict(temperature=1e-40, stream=True)),
        ("temperature 1e-40 n 4 logprobs", dict(temperature=1e-40, n=4, logprobs=True, top_logprobs=5)),
        ("repetition_penalty 1e-40 temperature 1", dict(repetition_penalty=1e-40, temperature=1)),
        ("top_p 1e-45 top_k 1 min_p 1", dict(top_p=1e-45, top_k=1, min_p=1)),
        ("penalties -2 ignore_eos", dict(presence_penalty=-2, frequency_penalty=-2, ignore_eos=True)),
    ]
    out += [case(r, label, with_fields(r, **kw), must=True) for label, kw in misc]
    return out


def completions_cases() -> list[Case]:
    r = "/v1/completions"
    prompts = [
        ("empty string", ""), ("empty list", []), ("[[]]", [[]]), ("[\"\"]", [""]), ("ids", [1, 2, 3]), ("id -1", [-1]),
        ("id 2^32", [2**32]), ("id 1e8", [10**8]), ("id vocab", [49152]), ("lists", [[1], [2]]), ("mixed", [[1], "a"]),
        ("float ids", [1.5]), ("object", {"a": 1}), ("65 prompts", ["a"] * 65), ("64 prompts", ["a"] * 64),
        ("64 prompts n 16", None), ("ids nested 3", [[[1]]]), ("long (context)", "word " * 20000),
    ]
    out = []
    for label, p in prompts:
        body = with_fields(r, prompt=["a"] * 64, n=16, max_tokens=1) if p is None else with_fields(r, prompt=p)
        out.append(case(r, f"prompt: {label}", body, must=True))
    out[-3].slow = True  # 1024 sequences: ~17 s on 2 cores
    misc = [("echo", dict(echo=True)), ("suffix", dict(suffix="x")), ("suffix null", dict(suffix=None)), ("best_of 2", dict(best_of=2)),
            ("logprobs 5", dict(logprobs=5)), ("logprobs 21", dict(logprobs=21)), ("logprobs -1", dict(logprobs=-1)),
            ("n 2 streamed", dict(n=2, stream=True)), ("n 0", dict(n=0)), ("n 1000", dict(n=1000)),
            ("max_tokens 1e9", dict(max_tokens=10**9)), ("max_tokens 0", dict(max_tokens=0)), ("model wrong", dict(model="x")),
            ("temperature 1e-40", dict(temperature=1e-40)), ("temperature 1e-40 streamed", dict(temperature=1e-40, stream=True))]
    out += [case(r, label, with_fields(r, **kw), must=True) for label, kw in misc]
    return out


def generate_cases() -> list[Case]:
    r = "/generate"
    misc = [("n 2", dict(n=2)), ("stream", dict(stream=True)), ("prompt empty", dict(prompt="")), ("prompt ids", dict(prompt=[1, 2])),
            ("max_tokens 1e9", dict(max_tokens=10**9)), ("long prompt (context)", dict(prompt="word " * 20000)),
            ("temperature 1e-40", dict(temperature=1e-40)), ("temperature 1e-40 streamed", dict(temperature=1e-40, stream=True)),
            ("model field", dict(model=MODEL)), ("messages field", dict(messages=[{"role": "user", "content": "x"}]))]
    return [case(r, label, with_fields(r, **kw), must=True) for label, kw in misc]


def tokenize_cases() -> list[Case]:
    r = "/tokenize"
    out = [case(r, "prompt and messages", {"prompt": "a", "messages": [{"role": "user", "content": "x"}]}, must=True),
           case(r, "neither", {}, must=True), case(r, "model wrong", {"prompt": "a", "model": "x"}, must=True),
           case(r, "sampling field", {"prompt": "a", "temperature": 1}, must=True)]
    out += [case(r, f"messages: {label}", {"messages": m}, must=label.startswith(("role", "tool"))) for label, m in MESSAGE_CASES]
    out += [case(r, f"tools: {label}", {"messages": [{"role": "user", "content": "x"}], "tools": t}, must=True) for label, t in TOOL_CASES]
    return out


def detokenize_cases() -> list[Case]:
    r = "/detokenize"
    tokens = [("empty", []), ("-1", [-1]), ("2^32", [2**32]), ("vocab", [49152]), ("vocab-1", [49151]), ("100k ids", [i % 49000 for i in range(100_000)]),
              ("string", "abc"), ("floats", [1.5]), ("nested", [[1]]), ("null", None), ("special ids", [0, 1, 2])]
    out = [case(r, f"tokens: {label}", {"tokens": t}, must=True) for label, t in tokens]
    out.append(case(r, "model wrong", {"tokens": [1], "model": "x"}, must=True))
    return out


def embeddings_cases():
    r = "/v1/embeddings"
    inputs = [("empty string", ""), ("empty list", []), ("2049 inputs", ["x"] * 2049), ("id 2^32", [2**32]),
              ("token lists", [[1, 2], [3]]), ("empty token list", [[]]), ("mixed", ["a", [1]]), ("long (context)", "word " * 20000)]
    out = [case(r, f"input: {label}", with_fields(r, input=v), must=True) for label, v in inputs]
    out += [case(r, f"dimensions {d}", with_fields(r, dimensions=d), must=True) for d in (0, -1, 1, 10**9)]
    out += [case(r, f"encoding_format {f}", with_fields(r, encoding_format=f), must=True) for f in ("base64", "binary", 5)]
    return out


def responses_cases():
    r = "/v1/responses"
    items = [("function_call without call_id", [{"type": "function_call", "name": "f", "arguments": "{}"}]),
             ("function_call_output alone", [{"type": "function_call_output", "call_id": "c", "output": "x"}]),
             ("input_image", [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]),
             ("item_reference", [{"type": "item_reference", "id": "x"}]), ("role tool", [{"role": "tool", "content": "x"}]),
             ("content 5", [{"role": "user", "content": 5}]), ("empty list", []), ("reasoning only", [{"type": "reasoning"}])]
    out = [case(r, f"input: {label}", with_fields(r, input=v), must=True) for label, v in items]
    out += [case(r, f"tools: {label}", with_fields(r, tools=v), must=True) for label, v in [
        ("web_search", [{"type": "web_search"}]), ("nested chat tool", [{"type": "function", "function": FN}]),
        ("valid", [{"type": "function", **FN}]), ("no name", [{"type": "function", "parameters": {}}])]]
    out += [case(r, f"text: {label}", with_fields(r, text=v), must=True) for label, v in [
        ("json_schema no schema", {"format": {"type": "json_schema", "name": "x"}}), ("format yaml", {"format": {"type": "yaml"}}),
        ("verbosity high", {"verbosity": "high"}), ("json_object", {"format": {"type": "json_object"}})]]
    out += [case(r, "previous_response_id unknown", with_fields(r, previous_response_id="resp_nope"), must=True),
            case(r, "metadata 17 pairs", with_fields(r, metadata={f"k{i}": "v" for i in range(17)}), must=True),
            case(r, "stream", with_fields(r, stream=True), must=True)]
    return out


def messages_cases(route="/v1/messages"):
    r = route
    blocks = [("tool_result without id", [{"type": "tool_result", "content": "x"}]),
              ("image", [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]),
              ("tool_use from the user", [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]),
              ("block without type", [{"text": "hi"}]), ("text 5", [{"type": "text", "text": 5}])]
    out = [case(r, f"content: {label}", with_fields(r, messages=[{"role": "user", "content": v}]), must=True) for label, v in blocks]
    out += [case(r, f"messages: {label}", with_fields(r, messages=v), must=True) for label, v in [
        ("role system", [{"role": "system", "content": "x"}]), ("empty", []),
        ("assistant tool_use without input", [{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}])]]
    out += [case(r, f"tool_choice {short(v)}", with_fields(r, tool_choice=v), must=True) for v in (
        {"type": "tool"}, {"type": "bogus"}, {"type": "any", "disable_parallel_tool_use": "yes"}, "auto")]
    out += [case(r, f"tools: {label}", with_fields(r, tools=v), must=True) for label, v in [
        ("server tool", [{"type": "web_search_20250305", "name": "web_search"}]), ("no input_schema", [{"name": "f"}]),
        ("valid", [{"name": "f", "input_schema": {"type": "object"}}])]]
    if r == "/v1/messages":
        out += [case(r, "stream", with_fields(r, stream=True), must=True),
                case(r, "thinking enabled", with_fields(r, thinking={"type": "enabled", "budget_tokens": 1024}), must=True),
                case(r, "output_config format", with_fields(r, output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}), must=True)]
    return out


SPECIFIC = {"/v1/chat/completions": chat_cases, "/v1/completions": completions_cases, "/v1/embeddings": embeddings_cases,
            "/v1/responses": responses_cases, "/v1/messages": messages_cases,
            "/v1/messages/count_tokens": lambda: messages_cases("/v1/messages/count_tokens"),
            "/generate": generate_cases, "/tokenize": tokenize_cases, "/detokenize": detokenize_cases}


def short(v) -> str:
    text = repr(v) if isinstance(v, Raw) else json.dumps(v, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


# Cases kept even in the smallest runs: the inputs that break servers.
KEY_LABELS = {
    "temperature = 1e-40", "temperature 1e-40", "temperature 1e-40 streamed", "temperature 1e-40 n 4 logprobs",
    "repetition_penalty 1e-40 temperature 1", "temperature = Raw(b'NaN')", "temperature = Raw(b'1e999')",
    "top_p = 5e-324", "structure: deep list 100000", "structure: deep object 5000", "invalid UTF-8 #0 in a value",
    "n 1000", "n = 1000", "max_tokens 1e9", "prompt: id 2^32", "tokens: 2^32", "messages: role function",
    "response_format: recursive $ref", "tools: parameters recursive $ref", "http: chunked body",
}


def priority(c: Case) -> int:
    key = c.label in KEY_LABELS or c.label.startswith("missing") or (c.label.startswith("http: ") and "limit" in c.label)
    return 2 if key else 1 if c.must else 0


def build_cases(count: int, seed: int, quick: bool = False) -> list[Case]:
    """`count` cases per route (0: the whole pool): key cases first, then must-cases, then the
    rest, each group in an order drawn with `seed`; topped up with random
    multi-field bodies when a route has fewer."""
    rng = random.Random(seed)
    out = []
    for route in ROUTES:
        pool = structural_cases(route) + http_cases(route) + SPECIFIC[route]() + field_cases(route, rng)
        pool = list({(c.label, c.body, c.chunked, c.method): c for c in pool}.values())  # one of each
        if quick:
            pool = [c for c in pool if not c.slow]
        rng.shuffle(pool)
        pool.sort(key=priority, reverse=True)  # stable: shuffled within a priority
        chosen = pool[:count] if count else pool
        if len(chosen) < count:
            chosen += combo_cases(route, rng, count - len(chosen))
        out += chosen
    return out
