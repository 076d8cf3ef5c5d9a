"""The Responses API through real clients: the `openai` SDK's
`responses.create`, `responses.stream`, `responses.parse`,
`previous_response_id`, `retrieve`/`delete` and a function-call round trip,
and the OpenAI Agents SDK with its default model (`OpenAIResponsesModel`).
Run against the default model (SmolLM2) and the tiny random Qwen3 with
Qwen3's real template, and again through a routing Ember whose upstreams
speak only chat completions (scripts/client-tests.sh)."""

import asyncio
import json
from typing import Literal

import jsonschema
import openai
import pytest
from agents import Agent, ModelBehaviorError, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from clients_common import API_KEY, SERVERS, WEATHER, WEATHER_QUESTION, Forecast

TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
          "parameters": WEATHER, "strict": True}]
QUESTION = WEATHER_QUESTION

# The Agents SDK would send its traces to OpenAI's platform.
set_tracing_disabled(True)


@pytest.fixture(params=list(SERVERS), scope="module")
def server(request):
    url, model = SERVERS[request.param]
    if not url:
        pytest.skip(f"no {request.param} server")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    return request.param, client, model, url


def sampling(server):
    """Greedy on the trained model; sampled on the random one (see test_tools_clients.py)."""
    return {"temperature": 0} if server[0] == "smollm2" else {"temperature": 1.0}


def create(server, **kwargs):
    _, client, model, _ = server
    kwargs.setdefault("max_output_tokens", 120)
    for key, value in sampling(server).items():
        kwargs.setdefault(key, value)
    return client.responses.create(model=model, **kwargs)


def test_a_response_answers(server):
    r = create(server, input="What is the capital of France?", instructions="Answer in one word.",
               max_output_tokens=24)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == server[2]
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if server[0] == "smollm2":
        assert "Paris" in r.output_text


def test_a_length_cut_is_incomplete(server):
    # Greedy: sampling the random model could end the answer early.
    r = create(server, input="Tell me a long story about a dragon.", max_output_tokens=16, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 16


def test_the_stream_is_the_responses_event_sequence(server):
    _, client, model, _ = server
    with client.responses.stream(model=model, input="Name three colors.", max_output_tokens=24,
                                 **sampling(server)) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    # The SDK's `get_final_response` wants `response.completed`; a length
    # cut ends with `response.incomplete`, as OpenAI's does.
    final = events[-1].response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert kind in kinds, kind
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text
    assert final.usage.output_tokens > 0


def test_previous_response_id_retrieve_and_delete(server):
    _, client, _, _ = server
    first = create(server, input="My name is Ada.", max_output_tokens=8)
    second = create(server, input="What is my name?", previous_response_id=first.id, max_output_tokens=8)
    assert second.previous_response_id == first.id
    # The second prompt holds the first turn: its question and answer.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        create(server, input="And now?", previous_response_id=first.id)
    assert e.value.body["param"] == "previous_response_id"
    unstored = create(server, input="Not kept.", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def check_call(item):
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id
    jsonschema.validate(json.loads(item.arguments), WEATHER)


def test_a_function_call_round_trip(server):
    first = create(server, input=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    for call in calls:
        check_call(call)
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "18 C and sunny"} for c in calls]
    # Continued from the stored response...
    stored = create(server, input=outputs, previous_response_id=first.id, tools=TOOLS, tool_choice="none")
    assert stored.status in ("completed", "incomplete")
    assert not [item for item in stored.output if item.type == "function_call"]
    # ...or with the whole conversation sent back, output items included.
    replayed = create(server, input=[{"role": "user", "content": QUESTION}, *first.output, *outputs],
                      tools=TOOLS, tool_choice="none", store=False)
    assert replayed.usage.input_tokens == stored.usage.input_tokens


def test_streamed_function_call_arguments(server):
    _, client, model, _ = server
    # One call, so the random model cannot go on calling until the length cut.
    with client.responses.stream(model=model, input=QUESTION, tools=TOOLS, tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=120, **sampling(server)) as stream:
        events = list(stream)
    final = events[-1].response
    assert final.status == "completed", final.incomplete_details
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and deltas == "".join(e.arguments for e in done)
    for item in final.output:
        check_call(item)


def test_parse_with_a_pydantic_model(server):
    _, client, model, _ = server
    r = client.responses.parse(model=model, input="Forecast for Paris as JSON.", text_format=Forecast,
                               max_output_tokens=400, **sampling(server))
    # The random model, sampled (the Responses API has no seed), may write
    # an integer's digits until the length cut; the trained one must finish.
    if server[0] != "smollm2" and r.status == "incomplete":
        return
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Forecast)


def test_unsupported_fields_are_refused_by_name(server):
    with pytest.raises(openai.BadRequestError) as e:
        create(server, input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as e:
        create(server, input="hi", background=True)
    assert e.value.body["param"] == "background"
    with pytest.raises(openai.BadRequestError) as e:
        create(server, input="hi", max_output_tokens=0)
    assert e.value.body["param"] == "max_output_tokens"


@function_tool
def get_weather(city: Literal["Paris", "Rome", "Oslo", "Tokyo"], unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather in a city."""
    return f"18 degrees {unit} and sunny in {city}"


def agent(server, **kwargs):
    _, _, model, url = server
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    settings = ModelSettings(max_tokens=120, **sampling(server), **kwargs.pop("settings", {}))
    return Agent(name="assistant", instructions="You are a helpful assistant.",
                 model=OpenAIResponsesModel(model=model, openai_client=client), model_settings=settings, **kwargs)


def test_the_agents_sdk_runs_on_its_default_responses_model(server):
    if server[0] != "smollm2":
        # The random model never ends its answer: the SDK sees `response.incomplete`.
        with pytest.raises(ModelBehaviorError, match="max_output_tokens"):
            Runner.run_sync(agent(server), "What is the capital of France?", max_turns=1)
        return
    result = Runner.run_sync(agent(server), "What is the capital of France?", max_turns=1)
    assert "Paris" in result.final_output


def test_the_agents_sdk_calls_a_tool(server):
    def tool_agent():
        """Each run its own agent: an agent's HTTP client belongs to the event loop it first ran on."""
        return agent(server, tools=[get_weather], settings={"tool_choice": "get_weather"},
                     tool_use_behavior="stop_on_first_tool")

    result = Runner.run_sync(tool_agent(), QUESTION, max_turns=2)
    assert result.final_output.startswith("18 degrees")

    async def streamed():
        run = Runner.run_streamed(tool_agent(), QUESTION, max_turns=2)
        kinds = [event.type async for event in run.stream_events()]
        return run.final_output, kinds

    output, kinds = asyncio.run(streamed())
    assert output.startswith("18 degrees") and "raw_response_event" in kinds
