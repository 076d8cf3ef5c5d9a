"""`/v1/embeddings` through real clients: the `openai` SDK (which asks for
base64 by default and decodes it), floats, `dimensions`, token-id inputs
checked against transformers' reference vectors of the tiny Qwen3-Embedding
fixture (tests/fixtures/qwen3-embed-tiny), and LangChain's
`OpenAIEmbeddings`. Started by scripts/client-tests.sh, directly and
through a routing Ember."""

import base64
import json
import math
import os
import pathlib
import struct

import openai
import pytest
from langchain_openai import OpenAIEmbeddings

API_KEY = os.environ["EMBER_API_KEY"]
URL = os.environ.get("EMBER_EMBED_URL")
MODEL = os.environ.get("EMBER_EMBED_MODEL")
REFERENCE = json.loads(
    (pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "qwen3-embed-tiny" / "reference.json").read_text()
)

pytestmark = pytest.mark.skipif(not URL, reason="no embedding server")


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def close(a, b, tolerance=1e-4):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= tolerance


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def vector(embedding):
    """A float list, or base64 of little-endian f32 (returned as sent when
    the caller names the format; the SDK decodes it when it chose it)."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return embedding


def test_token_inputs_match_the_transformers_reference(client):
    cases = REFERENCE["cases"]
    for encoding in (openai.NOT_GIVEN, "base64", "float"):
        r = client.embeddings.create(model=MODEL, input=[c["input"] for c in cases], encoding_format=encoding)
        assert r.object == "list" and r.model == MODEL and len(r.data) == len(cases)
        for item, case in zip(r.data, cases):
            assert item.object == "embedding"
            assert isinstance(item.embedding, str) == (encoding == "base64")
            assert close(vector(item.embedding), case["last"]), (encoding, len(case["input"]))
        assert r.usage.prompt_tokens == sum(len(c["input"]) for c in cases) == r.usage.total_tokens


def test_texts_and_dimensions(client):
    r = client.embeddings.create(model=MODEL, input=["Hello, Ember!", "The capital of France is Paris."])
    full = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1] and all(abs(norm(v) - 1) < 1e-5 for v in full)
    assert not close(full[0], full[1])
    one = client.embeddings.create(model=MODEL, input="Hello, Ember!").data[0].embedding
    assert close(one, full[0])
    cut = client.embeddings.create(model=MODEL, input="Hello, Ember!", dimensions=16).data[0].embedding
    assert len(cut) == 16 and abs(norm(cut) - 1) < 1e-5
    head = [x / norm(full[0][:16]) for x in full[0][:16]]
    assert close(cut, head)


def test_errors_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="hi", dimensions=100_000)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="")
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model"
    generative = os.environ["EMBER_MODEL"]
    other = openai.OpenAI(base_url=f"{os.environ['EMBER_BASE_URL']}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        other.embeddings.create(model=generative, input="hi")
    assert e.value.body["param"] == "model" and "embed" in e.value.body["message"]


def test_langchain_openai_embeddings():
    embeddings = OpenAIEmbeddings(base_url=f"{URL}/v1", api_key=API_KEY, model=MODEL,
                                  check_embedding_ctx_length=False, max_retries=0)
    documents = embeddings.embed_documents(["Paris is in France.", "Berlin is in Germany."])
    query = embeddings.embed_query("Paris is in France.")
    assert len(documents) == 2 and close(query, documents[0])
    assert all(abs(norm(v) - 1) < 1e-5 for v in documents)
