"""The official `openai` Python SDK against a running `ember serve` on the
default model (SmolLM2-135M-Instruct). Started by scripts/client-tests.sh,
which sets EMBER_BASE_URL, EMBER_API_KEY and EMBER_MODEL."""

import json
import os
import subprocess

import openai
import pytest

BASE_URL = os.environ["EMBER_BASE_URL"]
API_KEY = os.environ["EMBER_API_KEY"]
MODEL = os.environ["EMBER_MODEL"]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def ask(client, content, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_a_real_answer(client):
    r = ask(client, "What is the capital of France?")
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.model == MODEL


def test_multi_turn_reuses_the_cached_prefix(client):
    messages = [
        {"role": "system", "content": "You are a concise assistant. " * 8},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= 16
    assert "Rome" in second.choices[0].message.content


def test_streaming_with_usage(client):
    stream = ask(client, "Name three colours.", stream=True, stream_options={"include_usage": True})
    text, finish, usage, roles = "", None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        roles += delta.role == "assistant"
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == 1 and text and finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0
    assert text == ask(client, "Name three colours.").choices[0].message.content


def test_n_choices_and_seed_reproducibility(client):
    kwargs = dict(n=2, temperature=1.0, seed=1234, max_tokens=16)
    a = ask(client, "Tell me a fun fact.", **kwargs)
    b = ask(client, "Tell me a fun fact.", **kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_stop_sequences_are_not_emitted(client):
    free = ask(client, "Count from 1 to 10, separated by commas.", max_tokens=40).choices[0].message.content
    assert "5" in free, free
    stopped = ask(client, "Count from 1 to 10, separated by commas.", max_tokens=40, stop=["5"])
    assert stopped.choices[0].message.content == free[: free.index("5")]
    assert stopped.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = ask(client, "Say hello.", logprobs=True, top_logprobs=3, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert content and len(content) == r.usage.completion_tokens
    for tok in content:
        assert tok.logprob <= 0 and len(tok.top_logprobs) == 3
        assert tok.top_logprobs[0].logprob >= tok.top_logprobs[-1].logprob


def test_completions_and_models(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    ids = [m.id for m in client.models.list().data]
    # Through a routing Ember, every upstream's models are listed.
    assert MODEL in ids if os.environ.get("EMBER_VIA_UPSTREAM") else ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "hi", temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "hi", max_tokens=10_000_000)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        ask(client, "hi", extra_body={"no_such_field": 1})
    bad_key = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


def test_a_full_queue_raises_rate_limit_error():
    """A second server with no queue: every request is refused with 429."""
    url = os.environ.get("EMBER_NO_QUEUE_URL")
    if not url:
        pytest.skip("EMBER_NO_QUEUE_URL not set")
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        ask(c, "hi")


def test_generate_with_curl():
    out = subprocess.run(
        ["curl", "-sf", f"{BASE_URL}/generate", "-H", f"Authorization: Bearer {API_KEY}",
         "-H", "Content-Type: application/json",
         "-d", json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})],
        check=True, capture_output=True, text=True,
    )
    assert json.loads(out.stdout)["text"]
    out = subprocess.run(
        ["curl", "-sfN", f"{BASE_URL}/generate", "-H", f"Authorization: Bearer {API_KEY}",
         "-H", "Content-Type: application/json",
         "-d", json.dumps({"prompt": "Hello", "max_tokens": 4, "stream": True})],
        check=True, capture_output=True, text=True,
    )
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "text" in json.loads(events[0])
    health = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{BASE_URL}/health"],
                            capture_output=True, text=True)
    assert health.stdout == "200"


def test_the_readme_example_answers_paris_most_of_the_time():
    """The README's first request, as a new user sends it: no sampling
    fields, so the default model's sampling defaults apply (temperature 0.2,
    top_p 0.5). At temperature 1 over the whole vocabulary it rambled
    ("Balia (-is-lām) is the translation of the word Laurel...")."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32}
    answers = []
    for _ in range(8):
        out = subprocess.run(
            ["curl", "-sf", f"{BASE_URL}/v1/chat/completions", "-H", f"Authorization: Bearer {API_KEY}",
             "-H", "Content-Type: application/json", "-d", json.dumps(body)],
            check=True, capture_output=True, text=True,
        )
        answers.append(json.loads(out.stdout)["choices"][0]["message"]["content"])
    assert sum("Paris" in a for a in answers) >= 6, answers
