"""Request and response bodies of the NeurIPS 2023 LLM Efficiency Challenge API (exact field names)."""

from pydantic import BaseModel, Field


class ProcessRequest(BaseModel):
    prompt: str
    num_samples: int = Field(1, ge=1)
    max_new_tokens: int = Field(50, ge=0)
    top_k: int = Field(200, ge=0)  # 0 = no top-k filter
    temperature: float = Field(0.8, ge=0.0)  # 0 = greedy
    seed: int | None = None
    echo_prompt: bool | None = None  # only an explicit false strips the prompt (reference lit-gpt server)


class Token(BaseModel):
    text: str
    logprob: float
    top_logprob: dict[str, float]


class Sample(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float


class ProcessResponse(BaseModel):
    text: str
    tokens: list[Token]
    logprob: float
    request_time: float
    adapter: str  # the routed adapter ('base' = none); not in the reference API, ignored by HELM
    route: str  # what decided it: rule:<name>, embedding:<cosine>, default
    samples: list[Sample] = []  # samples 2..num_samples


class TokenizeRequest(BaseModel):
    text: str
    truncation: bool = True
    max_length: int = Field(2048, ge=1)


class TokenizeResponse(BaseModel):
    tokens: list[int]
    request_time: float


class DecodeRequest(BaseModel):
    tokens: list[int]


class DecodeResponse(BaseModel):
    text: str
    request_time: float
