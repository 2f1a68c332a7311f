"""What a caller gives the LLM client and gets back: the endpoint's config, a request, a completion,
and the one error every failed request becomes (:mod:`refinelib.synth.llm` is the client).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from refinelib.redact import redact_url

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


LOCAL_PLACEHOLDER_KEY = "not-needed"  # vLLM and Ollama accept any key unless started with one


# Parameters LLMClient sets itself, or that would break "one answer per request": refused in `extra`.
RESERVED_EXTRA = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
                  "stream", "timeout", "extra_headers", "extra_query")


@dataclass
class LLMConfig:
    """Which endpoint and how to sample; saved next to every synthesis artifact (never the key itself)."""

    model: str = field(metadata={"help": "the served model's name, part of the cache key"})
    base_url: str | None = field(default=None, metadata={
        "help": "None: OpenAI's; e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama)"})
    temperature: float = field(default=1.0, metadata={"help": "the paper samples its teacher; 0 is greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    max_tokens: int = field(default=2048, metadata={"help": "a script or a trajectory fits, with room"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per HTTP attempt"})
    max_retries: int = field(default=5, metadata={
        "help": "the openai client's retries (backoff 0.5 s doubling, cap 8 s)"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight in complete_many"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "the environment variable holding the key; the key itself is never a parameter"})
    price_per_1m_input: float | None = field(default=None, metadata={
        "help": "USD per million prompt tokens (None: cost not reported)"})
    price_per_1m_output: float | None = field(default=None, metadata={
        "help": "USD per million completion tokens"})
    extra: dict = field(default_factory=dict, metadata={"help": 'more create() parameters, e.g. {"seed": 0}'})

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"LLMConfig.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.model, str) or not self.model.strip():
            raise bad("model", "must be a non-empty model name")
        if self.base_url is not None and (not isinstance(self.base_url, str)
                                          or urlparse(self.base_url).scheme not in ("http", "https")
                                          or not urlparse(self.base_url).hostname):
            raise bad("base_url", "must be None or an http(s) URL such as http://localhost:8000/v1")
        for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise bad(name, f"must be a number in [{low}, {high}]")
        for name, low in (("max_tokens", 1), ("max_retries", 0), ("concurrency", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an integer >= {low}")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise bad("timeout", "must be a positive number of seconds")
        if not isinstance(self.api_key_env, str) or not self.api_key_env.strip():
            raise bad("api_key_env", "must name an environment variable (the key itself never goes here)")
        for name in ("price_per_1m_input", "price_per_1m_output"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not value >= 0):
                raise bad(name, "must be None or a price >= 0 (USD per million tokens)")
        if (self.price_per_1m_input is None) != (self.price_per_1m_output is None):
            raise bad("price_per_1m_output" if self.price_per_1m_output is None else "price_per_1m_input",
                      "set both prices or neither")
        if not isinstance(self.extra, dict):
            raise bad("extra", "must be a dict of create() parameters")
        reserved = sorted(set(self.extra) & set(RESERVED_EXTRA))
        if reserved:
            raise bad("extra", f"may not set {reserved}: use the LLMConfig fields")
        try:
            canonical_json(self.extra)
        except TypeError as error:
            raise bad("extra", f"must be JSON-serialisable (it is part of the cache key): {error}") from None

    def __repr__(self) -> str:
        return "LLMConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    def to_dict(self) -> dict:
        """The config as plain data to store: names the key's environment variable, never holds the key,
        and ``base_url`` has its credentials removed (:func:`redact_url`)."""
        return {**asdict(self), "base_url": redact_url(self.base_url)}


@dataclass(frozen=True)
class Request:
    """One chat request for :meth:`LLMClient.complete_many`."""

    messages: list[dict]
    stage: str
    sample: int = 0
    prompt_version: str = ""


@dataclass(frozen=True)
class Completion:
    """One answer. A cache hit reports the tokens the answer originally cost (``cached=True``)."""

    text: str
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    key: str                  # the cache key (sha256 hex), for usage_of and provenance
    finish_reason: str = ""   # "length" means the answer was cut at max_tokens


class LLMError(RuntimeError):
    """A request that still failed after the client's retries (or could not be retried).

    Attributes: ``stage``, ``kind`` (``"http"``, ``"timeout"``, ``"connection"``, ``"malformed"``), and
    ``status`` (the HTTP status, or None).
    """

    def __init__(self, stage: str, kind: str, status: int | None, detail: str) -> None:
        self.stage, self.kind, self.status, self.detail = stage, kind, status, detail
        what = f"HTTP {status}" if status is not None else kind
        super().__init__(f"LLM request for stage {stage!r} failed: {what}: {detail}")

    def __reduce__(self):  # picklable, so it can cross a process pool
        return LLMError, (self.stage, self.kind, self.status, self.detail)


def canonical_json(obj) -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal requests hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
