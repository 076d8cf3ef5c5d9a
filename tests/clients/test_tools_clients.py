"""Function calling and structured output through real clients: the
`openai` SDK (tools with each tool_choice, streamed tool-call deltas,
`chat.completions.parse` with a Pydantic model) and LangChain's ChatOpenAI
(`bind_tools` in a two-step tool loop, `with_structured_output`). Each test
runs on the default model (SmolLM2, whose template ignores tools: Ember
writes the hermes prompt) and on a tiny random Qwen3 with the real Qwen3
tokenizer (`<tool_call>` is token 151657) and Qwen3-Instruct-2507's own
template (tests/clients/qwen3_tool_fixture.py). Arguments are checked with
the `jsonschema` validator."""

import json
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from clients_common import API_KEY, SERVERS, WEATHER, WEATHER_QUESTION, Forecast

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time"}},
]
QUESTION = [{"role": "user", "content": WEATHER_QUESTION}]


@pytest.fixture(params=list(SERVERS), scope="module")
def server(request):
    url, model = SERVERS[request.param]
    if not url:
        pytest.skip(f"no {request.param} server")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    return request.param, client, model, url


def check_call(call):
    assert call.id.startswith("call_") and call.type == "function"
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER)
    else:
        assert call.function.name == "get_time" and arguments == {}
    return call.function.name, arguments


def sampling(server):
    """Greedy on the trained model; sampled on the random one, where greedy
    decoding can repeat one digit of an unbounded integer, or one call after
    another, forever."""
    return {"temperature": 0} if server[0] == "smollm2" else {"temperature": 1.0, "seed": 2}


def create(server, **kwargs):
    _, client, model, _ = server
    kwargs.setdefault("max_tokens", 120)
    for key, value in sampling(server).items():
        kwargs.setdefault(key, value)
    return client.chat.completions.create(model=model, messages=kwargs.pop("messages", QUESTION), **kwargs)


def test_required_makes_a_valid_call(server):
    r = create(server, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call)


def test_named_function_is_the_call(server):
    r = create(server, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and check_call(calls[0])[0] == "get_weather"
    if server[0] == "smollm2":
        # A trained model picks the city it was asked about.
        assert check_call(calls[0])[1]["city"] == "Paris"


def test_none_never_calls(server):
    r = create(server, tools=TOOLS, tool_choice="none", max_tokens=40)
    message = r.choices[0].message
    assert not message.tool_calls and "<tool_call>" not in (message.content or "")
    assert r.choices[0].finish_reason in ("stop", "length")


def test_auto_gives_text_or_valid_calls(server):
    r = create(server, tools=TOOLS, tool_choice="auto", max_tokens=60, n=3, temperature=1.0, seed=4)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for choice in r.choices:
        calls = choice.message.tool_calls
        if calls and choice.finish_reason == "length":
            # Cut off by max_tokens: every call but the last is whole, and the
            # last names a declared tool.
            for call in calls[:-1]:
                check_call(call)
            assert calls[-1].id.startswith("call_") and calls[-1].function.name in ("get_weather", "get_time")
        elif calls:
            assert choice.finish_reason == "tool_calls"
            for call in calls:
                check_call(call)
        else:
            assert isinstance(choice.message.content, str)
            assert "<tool_call>" not in choice.message.content
            assert choice.finish_reason in ("stop", "length")


def test_single_call_when_parallel_calls_are_off(server):
    r = create(server, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=3)
    assert r.choices[0].finish_reason == "tool_calls"
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1
    check_call(calls[0])


def test_streamed_tool_call_deltas_accumulate(server):
    whole = create(server, tools=TOOLS, tool_choice="required", seed=8, temperature=1.0)
    stream = create(server, tools=TOOLS, tool_choice="required", seed=8, temperature=1.0, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert "<tool_call>" not in (choice.delta.content or "")
        for d in choice.delta.tool_calls or []:
            if d.index not in calls:
                assert d.id and d.type == "function" and d.function.name
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
            else:
                assert d.id is None and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    want = whole.choices[0].message.tool_calls
    assert want and calls, (want, calls)
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == [
        (w.function.name, w.function.arguments) for w in want
    ]
    for c in calls.values():
        json.loads(c["arguments"])


def test_parse_with_a_pydantic_model(server):
    _, client, model, _ = server
    r = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": "Forecast for Paris as JSON."}],
        response_format=Forecast, max_tokens=400, **sampling(server),
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, Forecast)


@tool
def get_weather(city: Literal["Paris", "Rome", "Oslo", "Tokyo"], unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather in a city."""
    return f"18 degrees {unit} and sunny in {city}"


def chat_model(server):
    _, _, model, url = server
    options = sampling(server)
    return ChatOpenAI(base_url=f"{url}/v1", api_key=API_KEY, model=model, temperature=options["temperature"],
                      seed=options.get("seed"), max_tokens=400, max_retries=0)


def test_langchain_two_step_tool_loop(server):
    llm = chat_model(server)
    messages = [HumanMessage("What is the weather in Paris, in celsius?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert len(first.tool_calls) == 1 and first.tool_calls[0]["name"] == "get_weather"
    call = first.tool_calls[0]
    result = get_weather.invoke(call["args"])
    messages += [first, ToolMessage(result, tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert final.content or final.tool_calls
    for c in final.tool_calls:
        jsonschema.validate(c["args"], WEATHER)
    if server[0] == "smollm2":
        assert "18" in final.content or "sunny" in final.content.lower()


def test_langchain_structured_output(server):
    for method in ("json_schema", "function_calling"):
        result = chat_model(server).with_structured_output(Forecast, method=method).invoke(
            "Forecast for Paris as JSON."
        )
        assert isinstance(result, Forecast), method
