"""What the client test files share: the servers scripts/client-tests.sh
started, the weather tool's argument schema, and the structured-output
model."""

import os
from typing import Literal

from pydantic import BaseModel

API_KEY = os.environ["EMBER_API_KEY"]
# The default model (SmolLM2), and the tiny random Qwen3 with Qwen3's real
# tokenizer and template (tests/clients/qwen3_tool_fixture.py).
SERVERS = {
    "smollm2": (os.environ["EMBER_BASE_URL"], os.environ["EMBER_MODEL"]),
    "qwen3-tiny": (os.environ.get("EMBER_QWEN3_URL"), os.environ.get("EMBER_QWEN3_MODEL")),
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_QUESTION = "What is the weather in Paris, in celsius?"


class Forecast(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    sunny: bool
    temperature: int
