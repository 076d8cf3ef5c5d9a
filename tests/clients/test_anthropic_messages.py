"""Anthropic's Messages API through the real `anthropic` SDK:
`messages.create`, `messages.stream`, a tool-use round trip (whole and
streamed), `count_tokens`, and typed errors. Run against the default model
(SmolLM2) and the tiny random Qwen3 with Qwen3's real template, and again
through a routing Ember whose upstreams speak only chat completions
(scripts/client-tests.sh)."""

import os

import anthropic
import jsonschema
import pytest

from clients_common import API_KEY, SERVERS, WEATHER, WEATHER_QUESTION, Forecast

VIA_UPSTREAM = bool(os.environ.get("EMBER_VIA_UPSTREAM"))
TOOLS = [{"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER}]
QUESTION = [{"role": "user", "content": WEATHER_QUESTION}]


@pytest.fixture(params=list(SERVERS), scope="module")
def server(request):
    url, model = SERVERS[request.param]
    if not url:
        pytest.skip(f"no {request.param} server")
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0, timeout=300)
    return request.param, client, model


def sampling(server):
    """Greedy on the trained model; sampled on the random one (see
    test_tools_clients.py). The SDK's methods no longer take sampling
    fields (newer Claude models fix them), so they go as extra body fields,
    as a client of an older API version sends them."""
    return {"extra_body": {"temperature": 0 if server[0] == "smollm2" else 1.0}}


def create(server, **kwargs):
    _, client, model = server
    kwargs.setdefault("max_tokens", 120)
    for key, value in sampling(server).items():
        kwargs.setdefault(key, value)
    return client.messages.create(model=model, messages=kwargs.pop("messages", QUESTION), **kwargs)


def test_a_message_answers(server):
    m = create(server, system="Answer in one word.", max_tokens=24,
               messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == server[2]
    assert m.content[0].type == "text"
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) > 0 and m.usage.output_tokens > 0
    if server[0] == "smollm2":
        assert "Paris" in m.content[0].text


def test_a_length_cut_says_max_tokens(server):
    # Greedy: sampling the random model could end the answer early.
    m = create(server, max_tokens=16, messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
               extra_body={"temperature": 0})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 16


def test_the_stream_is_anthropics_event_sequence(server):
    _, client, model = server
    with client.messages.stream(model=model, max_tokens=24, messages=[{"role": "user", "content": "Name three colors."}],
                                **sampling(server)) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for kind in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        assert kind in kinds, kind
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0


def tool_uses(message):
    uses = [block for block in message.content if block.type == "tool_use"]
    for use in uses:
        assert use.name == "get_weather" and use.id
        jsonschema.validate(use.input, WEATHER)
    return uses


def test_a_tool_use_round_trip(server):
    first = create(server, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    uses = tool_uses(first)
    assert uses and first.stop_reason == "tool_use"
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "18 C and sunny"} for u in uses]
    messages = [*QUESTION, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
    second = create(server, messages=messages, tools=TOOLS, tool_choice={"type": "none"})
    assert second.stop_reason in ("end_turn", "max_tokens") and not tool_uses(second)
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > first.usage.input_tokens


def test_a_streamed_tool_use_accumulates_its_input(server):
    _, client, model = server
    with client.messages.stream(model=model, max_tokens=120, messages=QUESTION, tools=TOOLS,
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                **sampling(server)) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert final.stop_reason == "tool_use" and len(tool_uses(final)) == 1


def test_output_format_follows_a_pydantic_model(server):
    _, client, model = server
    m = client.messages.parse(model=model, max_tokens=400, output_format=Forecast,
                              messages=[{"role": "user", "content": "Forecast for Paris as JSON."}], **sampling(server))
    # The random model, sampled, may write an integer's digits until the
    # length cut; the trained one must finish.
    if server[0] != "smollm2" and m.stop_reason == "max_tokens":
        return
    assert m.stop_reason == "end_turn"
    assert isinstance(m.parsed_output, Forecast)


def test_count_tokens_is_the_prompt_a_message_reads(server):
    if VIA_UPSTREAM:
        pytest.skip("counted by the server that holds the model")
    _, client, model = server
    count = client.messages.count_tokens(model=model, messages=QUESTION, system="Be brief.", tools=TOOLS)
    m = create(server, messages=QUESTION, system="Be brief.", tools=TOOLS, max_tokens=1)
    assert count.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


def test_typed_errors(server):
    with pytest.raises(anthropic.BadRequestError) as e:
        create(server, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0].type" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        create(server, extra_body={"temperature": -1})
    assert "temperature" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        server[1].messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=QUESTION)
    bad_key = anthropic.Anthropic(base_url=SERVERS[server[0]][0], api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad_key.messages.create(model=server[2], max_tokens=8, messages=QUESTION)
    assert e.value.body["error"]["type"] == "authentication_error"
