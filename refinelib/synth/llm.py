"""The LLM client for refinement-data synthesis: any OpenAI-compatible endpoint, cached, retried, metered.

Every answer is cached on disk by content, with sampling explicit in the key (model, endpoint, messages,
generation parameters, **sample index**, prompt version), so a re-run of a synthesis job costs nothing and
two samples of one prompt are two different draws. Retries are the ``openai`` client's own (exponential
backoff with jitter on 408/409/429/5xx, connection errors and timeouts, honouring ``Retry-After``); what
is still failing after them becomes an :class:`LLMError` that names the stage. A token ledger counts
calls, cache hits, tokens and cost per stage.

OpenAI (key in ``OPENAI_API_KEY``)::

    from refinelib.synth.llm import LLMClient, LLMConfig, Request
    client = LLMClient(LLMConfig("gpt-4o-2024-05-13", price_per_1m_input=5.0, price_per_1m_output=15.0))
    reply = client.complete([{"role": "user", "content": "Write a script."}], stage="script", sample=0)
    reply.text, reply.cached, reply.prompt_tokens
    client.ledger_table()                                   # per stage: requests, tokens, cost

vLLM (``vllm serve Qwen/Qwen2.5-7B-Instruct``; a local endpoint needs no key)::

    client = LLMClient(LLMConfig("Qwen/Qwen2.5-7B-Instruct", base_url="http://localhost:8000/v1",
                                 concurrency=32, extra={"seed": 0}))
    replies = client.complete_many([Request(messages, stage="trajectory", sample=s) for s in range(4)])

Ollama (``ollama serve``; its OpenAI-compatible API lives under ``/v1``)::

    client = LLMClient(LLMConfig("llama3.1:8b", base_url="http://localhost:11434/v1"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from refinelib.paths import cache_dir as default_cache_dir
from refinelib.paths import write_atomic
from refinelib.redact import REDACTED, redact_http_logs, redact_url, url_secrets
from refinelib.synth.llm_types import (
    LOCAL_HOSTS,
    LOCAL_PLACEHOLDER_KEY,
    Completion,
    LLMConfig,
    LLMError,
    Request,
    canonical_json,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache file layout changes; older files then read as misses


LEDGER_FIELDS = ("requests", "retries", "errors", "cache_hits", "prompt_tokens", "completion_tokens")


class LLMClient:
    """Cached, retried, metered chat completions against one OpenAI-compatible endpoint.

    Args:
        config: the endpoint and sampling parameters.
        cache_dir: where answers are cached (default ``refinelib.paths.cache_dir("llm")``).

    Attributes:
        ledger: a snapshot, per stage: ``requests`` (API calls that reached the endpoint: cache misses),
            ``retries`` (retries the openai client took on calls that then succeeded), ``errors`` (calls
            that ended in :class:`LLMError`), ``cache_hits``, ``prompt_tokens`` / ``completion_tokens``
            (spent by this client's requests) and ``cost`` (USD, None without prices).
        max_in_flight: the peak number of concurrent API calls.
    """

    def __init__(self, config: LLMConfig, cache_dir: Path | str | None = None) -> None:
        from openai import OpenAI

        if not isinstance(config, LLMConfig):
            raise ValueError(f"LLMClient: config must be an LLMConfig, got {type(config).__name__}")
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir("llm")
        key = os.environ.get(config.api_key_env, "")
        if not key:
            url = config.base_url or os.environ.get("OPENAI_BASE_URL")  # where the openai client will go
            host = urlparse(url).hostname if url else None
            if host not in LOCAL_HOSTS:
                raise RuntimeError(f"no API key: set the environment variable {config.api_key_env} "
                                   f"for {config.base_url or 'the OpenAI API'}")
            key = LOCAL_PLACEHOLDER_KEY
        # The key lives only inside the openai client (which sends it as a header), never on this object.
        self._openai = OpenAI(api_key=key, base_url=config.base_url, max_retries=config.max_retries,
                              timeout=config.timeout)
        # the endpoint actually used (None resolves to OpenAI's, or OPENAI_BASE_URL), without credentials:
        # part of the cache key, which is stored in every cache file
        self.endpoint = redact_url(str(self._openai.base_url).rstrip("/"))
        self._url_secrets = url_secrets(str(self._openai.base_url))
        if self._url_secrets:
            redact_http_logs()
        self._lock = threading.Lock()
        self._key_locks: dict[str, list] = {}  # key -> [Lock, users]: one API call per key at a time
        self._ledger: dict[str, dict] = {}
        self.in_flight = self.max_in_flight = 0

    def __repr__(self) -> str:
        c = self.config
        return (f"LLMClient(model={c.model!r}, base_url={redact_url(c.base_url)!r}, "
                f"api_key_env={c.api_key_env!r}, cache_dir={str(self.cache_dir)!r})")

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._openai.close()

    # -- cache ---------------------------------------------------------------------------------------
    def request_identity(self, messages: list[dict], sample: int = 0, prompt_version: str = "") -> dict:
        """What the cache key hashes: everything that changes the answer, and nothing secret."""
        c = self.config
        return {"model": c.model, "base_url": self.endpoint,
                "messages": messages, "temperature": c.temperature, "top_p": c.top_p,
                "max_tokens": c.max_tokens, "extra": c.extra, "sample": sample,
                "prompt_version": prompt_version}

    def cache_key(self, messages: list[dict], sample: int = 0, prompt_version: str = "") -> str:
        """sha256 of the canonical JSON of :meth:`request_identity`."""
        identity = self.request_identity(messages, sample, prompt_version)
        return hashlib.sha256(canonical_json(identity).encode()).hexdigest()

    def cache_path(self, key: str) -> Path:
        """``<cache_dir>/<first 2 hex digits>/<key>.json``: sharded so no directory grows huge."""
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> dict | None:
        """The cached answer, or None for a missing, corrupt or foreign file (a miss, never a crash)."""
        path = self.cache_path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            response = entry["response"]
            ok = (entry.get("format") == CACHE_FORMAT and entry.get("key") == key
                  and isinstance(response["text"], str) and isinstance(response["prompt_tokens"], int)
                  and isinstance(response["completion_tokens"], int))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            log.warning("ignoring unreadable LLM cache file %s (it will be overwritten)", path)
            return None
        return response

    # -- requests ------------------------------------------------------------------------------------
    def complete(self, messages: list[dict], *, stage: str, sample: int = 0,
                 prompt_version: str = "") -> Completion:
        """One answer: from the cache, else from the endpoint (then cached).

        Args:
            messages: OpenAI chat messages (``{"role", "content"}`` dicts).
            stage: the pipeline stage it belongs to (ledger row, error messages), e.g. ``"script"``.
            sample: which draw of this prompt (0, 1, ...): part of the key, so samples are distinct.
            prompt_version: the prompt template's version: part of the key, so a new prompt is a new answer.

        Returns:
            a :class:`Completion`.

        Raises:
            LLMError: the endpoint still failed after the retries; nothing is cached.
        """
        _check_request(messages, stage, sample, prompt_version)
        key = self.cache_key(messages, sample, prompt_version)
        with self._key_lock(key):  # a second thread asking the same thing waits, then hits the cache
            cached = self._read_cache(key)
            if cached is not None:
                self._count(stage, cache_hits=1)
                return Completion(cached["text"], True, cached["prompt_tokens"], cached["completion_tokens"],
                                  key, cached.get("finish_reason", ""))
            response = self._call(messages, stage, sample)
            entry = {"format": CACHE_FORMAT, "key": key, "stage": stage, "created": time.time(),
                     "request": self.request_identity(messages, sample, prompt_version), "response": response}
            path = self.cache_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(entry, ensure_ascii=False, indent=1))
        return Completion(response["text"], False, response["prompt_tokens"], response["completion_tokens"],
                          key, response["finish_reason"])

    def _call(self, messages: list[dict], stage: str, sample: int) -> dict:
        """One API call (with the openai client's retries); the answer as a cacheable dict."""
        import openai

        c = self.config
        extra = dict(c.extra)
        if "seed" in extra:  # each sample index is its own reproducible draw on servers that honour seeds
            extra["seed"] = int(extra["seed"]) + sample
        self._enter()
        try:
            raw = self._openai.chat.completions.with_raw_response.create(
                model=c.model, messages=messages, temperature=c.temperature, top_p=c.top_p,
                max_tokens=c.max_tokens, **extra)
            response = raw.parse()
        except openai.APITimeoutError:
            raise self._fail(stage, "timeout", None, f"no answer within {c.timeout} s") from None
        except openai.APIConnectionError:
            raise self._fail(stage, "connection", None, f"cannot reach {self.endpoint}") from None
        except openai.APIStatusError as error:
            raise self._fail(stage, "http", error.status_code, _server_message(error)) from None
        except (openai.APIResponseValidationError, json.JSONDecodeError):
            raise self._fail(stage, "malformed", None, "the response body is not JSON") from None
        finally:
            self._leave()
        choices = getattr(response, "choices", None)
        choice = choices[0] if isinstance(choices, list) and choices else None
        if getattr(choice, "message", None) is None:  # a 200 that is no chat completion (proxy, wrong route)
            raise self._fail(stage, "malformed", None, "the response has no choices[0].message")
        usage = response.usage
        out = {"text": choice.message.content or "", "finish_reason": choice.finish_reason or "",
               "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
               "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
               "model": response.model, "id": response.id}
        self._count(stage, requests=1, retries=raw.retries_taken, prompt_tokens=out["prompt_tokens"],
                    completion_tokens=out["completion_tokens"])
        return out

    def _fail(self, stage: str, kind: str, status: int | None, detail: str) -> LLMError:
        self._count(stage, requests=1, errors=1)
        return LLMError(stage, kind, status, self._scrub(detail))

    def _scrub(self, text: str) -> str:
        """Servers may echo the key (or part of it), or the URL's credentials, in error messages: never pass
        them on."""
        key = self._openai.api_key
        if key and key != LOCAL_PLACEHOLDER_KEY:
            text = text.replace(key, "***")
            if len(key) > 8:  # OpenAI echoes "sk-abc***...wxyz"; drop the visible tail too
                text = text.replace(key[-4:], "***")
        for secret in self._url_secrets:
            text = text.replace(secret, REDACTED)
        return text

    def complete_many(self, requests: list[Request], *, progress: bool = True) -> list[Completion | LLMError]:
        """Many answers on ``config.concurrency`` threads, in input order; a failure is its LLMError in place.

        Every request is checked before any is sent (bad input raises ValueError naming the request).
        """
        from tqdm.auto import tqdm

        for i, r in enumerate(requests):
            try:
                _check_request(r.messages, r.stage, r.sample, r.prompt_version)
            except ValueError as error:
                raise ValueError(f"requests[{i}]: {error}") from None
        results: list[Completion | LLMError | None] = [None] * len(requests)

        def one(r: Request) -> Completion | LLMError:
            try:
                return self.complete(r.messages, stage=r.stage, sample=r.sample,
                                     prompt_version=r.prompt_version)
            except LLMError as error:
                return error

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool, \
                tqdm(total=len(requests), desc=f"LLM {self.config.model}", disable=not progress) as bar:
            futures = {pool.submit(one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        return results

    # -- accounting ----------------------------------------------------------------------------------
    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._key_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._key_locks[key]

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _count(self, stage: str, **amounts: int) -> None:
        with self._lock:
            row = self._ledger.setdefault(stage, {**dict.fromkeys(LEDGER_FIELDS, 0), "cost": None})
            for name, amount in amounts.items():
                row[name] += amount
            row["cost"] = self.cost(row["prompt_tokens"], row["completion_tokens"])

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens at the configured prices (None when no prices are set)."""
        c = self.config
        if c.price_per_1m_input is None or c.price_per_1m_output is None:
            return None
        return (prompt_tokens * c.price_per_1m_input + completion_tokens * c.price_per_1m_output) / 1e6

    @property
    def ledger(self) -> dict[str, dict]:
        """A snapshot of the ledger: ``{stage: {requests, retries, errors, cache_hits, tokens..., cost}}``."""
        with self._lock:
            return {stage: dict(row) for stage, row in self._ledger.items()}

    @property
    def calls(self) -> int:
        """API calls made by this client (all stages; cache hits excluded)."""
        with self._lock:
            return sum(row["requests"] for row in self._ledger.values())

    def ledger_table(self):
        """The ledger as a DataFrame: a row per stage, then a ``total`` row; cost NaN without prices."""
        import pandas as pd

        with self._lock:
            rows = [{"stage": stage, **row} for stage, row in sorted(self._ledger.items())]
        table = pd.DataFrame(rows, columns=["stage", *LEDGER_FIELDS, "cost"])
        total = {"stage": "total", **{name: int(table[name].sum()) for name in LEDGER_FIELDS}}
        total["cost"] = self.cost(total["prompt_tokens"], total["completion_tokens"])
        table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
        table["cost"] = table["cost"].astype(float)  # None -> NaN
        return table

    def usage_of(self, keys: Iterable[str | Completion]) -> dict:
        """Tokens and cost originally spent on these answers (e.g. the calls behind one accepted trajectory).

        Args:
            keys: cache keys or :class:`Completion` objects (each counted once per occurrence).

        Returns:
            ``{"completions", "prompt_tokens", "completion_tokens", "cost"}`` (cost None without prices).

        Raises:
            KeyError: a key that is not in the cache.
        """
        out = {"completions": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for item in keys:
            if isinstance(item, Completion):
                prompt, completion = item.prompt_tokens, item.completion_tokens
            else:
                cached = self._read_cache(item)
                if cached is None:
                    raise KeyError(f"no cached LLM answer for key {item!r} in {self.cache_dir}")
                prompt, completion = cached["prompt_tokens"], cached["completion_tokens"]
            out["completions"] += 1
            out["prompt_tokens"] += prompt
            out["completion_tokens"] += completion
        out["cost"] = self.cost(out["prompt_tokens"], out["completion_tokens"])
        return out


def _check_request(messages, stage, sample, prompt_version) -> None:
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage={stage!r}: must be a non-empty string (the ledger row)")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"sample={sample!r}: must be an integer >= 0")
    if not isinstance(prompt_version, str):
        raise ValueError(f"prompt_version={prompt_version!r}: must be a string")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str | list):
            raise ValueError(f"messages[{i}]: must be a dict with a 'role' string and a 'content'")


def _server_message(error) -> str:
    """The server's own error message, short (from the body, never the request and its headers)."""
    body = error.body  # the openai client already unwrapped {"error": {...}}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or error.message)[:300]
