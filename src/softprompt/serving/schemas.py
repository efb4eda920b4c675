"""Request bodies of the HTTP API, in OpenAI's shapes where OpenAI has them.

Fields OpenAI defines that this server does not use are accepted and ignored, so existing
clients work unchanged; fields it uses are checked (a bad one is a 422 naming it).
Answers are greedy unless `temperature` is above 0: the same text `softprompt predict`
writes, whatever else the server answers at the time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# The most inputs one request may carry (each becomes a row of some batch).
MAX_INPUTS = 64
Text = Annotated[str, Field(max_length=100_000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Sampling(_Body):
    """Generation settings shared by the completion endpoints."""

    model: str = Field(description="the prompt's name (see GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="new tokens at most")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: Text | list[Text] | None = Field(None, description="up to 4 stop strings")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="choices per prompt (1)")

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops[:4] if s)


class CompletionRequest(Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ImageUrl(_Body):
    url: str = Field(description="a data: URI (data:image/png;base64,...)")


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageUrl


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart | ImagePart] | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)


class PredictInput(_Body):
    text: Text | None = None
    image: str | None = Field(None, description="base64 bytes (or a data: URI)")
    question: Text | None = None


class PredictRequest(_Body):
    model: str
    inputs: Annotated[list[PredictInput], Field(min_length=1, max_length=MAX_INPUTS)]
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
