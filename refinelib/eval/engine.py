"""The evaluation engine: a Llama-family forward pass over preallocated per-sequence KV caches.

Why not ``model.generate`` / ``model(..., past_key_values=...)``: transformers' ``DynamicCache`` grows by
concatenation, so every decode step copies every layer's whole cache (≈ 300 of the ≈ 350 ms a batch-16
step took on our 2-core CPU), and a left-padded batch attends over every row's padding. Here each
sequence owns a :class:`Sequence` buffer, allocated once with room to grow, into which a step *writes*
only its new keys/values; attention reads a view of the filled part. The rows of one forward are
*packed* (all new tokens of all rows in one matrix, no padding) for the linear layers, and attention
runs row by row on that row's own cache. A sequence can be started from a copy of another one's
prefix, which is how the agent instructions shared by a family's episodes are encoded once
(:class:`EnginePolicy`).

The layers themselves are the model's own modules (its norms, projections, MLP and rotary embedding),
so a LoRA adapter merged into the weights runs unchanged and greedy outputs match the transformers path.
Supported: Llama, Mistral and Qwen2 checkpoints (SmolLM2 is a Llama); others raise a clear error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from refinelib.eval.policies import TransformersPolicy, common_prefix

SUPPORTED = ("llama", "mistral", "qwen2")
_GROW = 256  # cache capacity grows in steps of this many positions (one copy per step, not per token)


def unsupported(model) -> str | None:
    """Why the engine cannot run ``model`` (None: it can)."""
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"the engine runs model_type in {SUPPORTED}, not {kind!r} (TransformersPolicy runs any)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the engine does not implement sliding-window attention (config.sliding_window)"
    if not hasattr(model, "model") or not hasattr(model.model, "rotary_emb"):
        return f"{type(model).__name__} is not a plain causal LM (merge a PEFT adapter first)"
    return None


def quantized(model):
    """A copy of ``model`` whose decoder layers compute in int8 (torch's dynamic quantization: weights
    int8 per output channel, activations quantized on the fly); the LM head stays float, since the
    greedy choice is most sensitive there. About half the CPU time of float32 on SmolLM2, but *not*
    the same outputs: measure its agreement (``benchmarks/agent_speed.py --int8``) before using it."""
    import copy
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        model.model.layers = quantize_dynamic(model.model.layers, spec, dtype=torch.qint8)
    return model


class Sequence:
    """One token sequence's keys/values: ``kv[layer, 0|1, kv_head, position, head_dim]``; ``ids`` are the
    tokens whose keys/values fill positions ``0 .. len(ids) - 1``."""

    def __init__(self, kv, ids: list[int] | None = None) -> None:
        self.kv, self.ids = kv, list(ids or [])

    def __len__(self) -> int:
        return len(self.ids)


class Engine:
    """Packed forward passes of a causal LM over :class:`Sequence` caches.

    Args:
        model: a ``transformers`` causal LM of a supported architecture (eval mode, LoRA merged).
    """

    def __init__(self, model) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(reason)
        config = model.config
        self.model = model
        self.base = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.layers = len(self.base.layers)
        weight = next(model.parameters())
        self.dtype, self.device = weight.dtype, weight.device  # caches live beside the weights

    # ----- sequences ---------------------------------------------------------------------------------
    def new_sequence(self, capacity: int = _GROW) -> Sequence:
        """An empty sequence with room for ``capacity`` positions (it grows when needed)."""
        import torch

        shape = (self.layers, 2, self.kv_heads, _round_up(capacity), self.head_dim)
        return Sequence(torch.empty(shape, dtype=self.dtype, device=self.device))

    def fork(self, source: Sequence, length: int, capacity: int = 0) -> Sequence:
        """A new sequence holding a copy of the first ``length`` positions of ``source``."""
        seq = self.new_sequence(max(capacity, length + 1))
        seq.kv[:, :, :, :length] = source.kv[:, :, :, :length]
        seq.ids = source.ids[:length]
        return seq

    def _reserve(self, seq: Sequence, length: int) -> None:
        """Make room for ``length`` positions (a copy into a larger buffer, rarely)."""
        if length <= seq.kv.shape[3]:
            return
        kv = seq.kv.new_empty((*seq.kv.shape[:3], _round_up(length), seq.kv.shape[4]))
        kv[:, :, :, :len(seq)] = seq.kv[:, :, :, :len(seq)]
        seq.kv = kv

    # ----- the forward pass --------------------------------------------------------------------------
    def forward(self, seqs: Seq[Sequence], new_ids: Seq[Seq[int]], every: bool = False):
        """Feed ``new_ids[i]`` after ``seqs[i]`` (appending their keys/values) and return the logits of each
        row's last new token, ``[len(seqs), vocab]`` (float32), or with ``every`` those of every new token,
        row after row (``[sum of lengths, vocab]``)."""
        import torch

        if len(seqs) != len(new_ids) or any(len(t) == 0 for t in new_ids):
            raise ValueError("forward needs one non-empty list of new tokens per sequence")
        if len({id(s) for s in seqs}) != len(seqs):
            raise ValueError("a sequence can appear only once in a forward pass")
        lengths = [len(t) for t in new_ids]
        starts = [len(s) for s in seqs]
        for seq, start, n in zip(seqs, starts, lengths, strict=True):
            self._reserve(seq, start + n)
        ids = torch.tensor([t for row in new_ids for t in row], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        positions = positions.to(self.device)
        masks = [_prefill_mask(s, n, self.group, self.device) for s, n in zip(starts, lengths, strict=True)]
        with torch.inference_mode():
            hidden = self.base.embed_tokens(ids)[None]  # [1, tokens, hidden]: one packed row
            cos, sin = self.base.rotary_emb(hidden, positions[None])
            cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # broadcast over heads
            for index, layer in enumerate(self.base.layers):
                hidden = self._layer(index, layer, hidden, cos, sin, seqs, starts, lengths, masks)
            if not every:
                hidden = hidden[:, torch.tensor(lengths, device=self.device).cumsum(0) - 1]
            logits = self.model.lm_head(self.base.norm(hidden))[0]
        for seq, row in zip(seqs, new_ids, strict=True):
            seq.ids += list(row)
        return logits.float()

    def _layer(self, index, layer, hidden, cos, sin, seqs, starts, lengths, masks):
        import torch

        attn = layer.self_attn
        x = layer.input_layernorm(hidden)[0]
        q = attn.q_proj(x).view(-1, self.heads, self.head_dim)
        k = attn.k_proj(x).view(-1, self.kv_heads, self.head_dim)
        v = attn.v_proj(x).view(-1, self.kv_heads, self.head_dim)
        # the model's rotary embedding, as transformers' apply_rotary_pos_emb applies it
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        outputs, offset = [], 0
        for seq, start, n, mask in zip(seqs, starts, lengths, masks, strict=True):
            end = start + n
            seq.kv[index, 0, :, start:end] = k[offset:offset + n].transpose(0, 1)
            seq.kv[index, 1, :, start:end] = v[offset:offset + n].transpose(0, 1)
            outputs.append(self._attend(q[offset:offset + n], seq.kv[index, 0, :, :end],
                                        seq.kv[index, 1, :, :end], start, mask, attn.scaling))
            offset += n
        hidden = hidden + attn.o_proj(torch.cat(outputs)[None])
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _attend(self, q, keys, values, start: int, mask, scale: float):
        """One row's attention: ``q`` [n, heads, head_dim] over its cache [kv_heads, start + n, head_dim];
        returns [n, heads * head_dim]. The fastest form on a CPU differs by case (measured)."""
        import torch
        import torch.nn.functional as F

        n = q.shape[0]
        if start == 0 and n > 1:
            # a fresh prompt: the fused causal kernel, with keys repeated per query head (enable_gqa and
            # explicit masks fall back to a path ≈ 4x slower)
            keys, values = (x.repeat_interleave(self.group, 0)[None] for x in (keys, values))
            out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, is_causal=True,
                                                 scale=scale)[0]
            return out.transpose(0, 1).reshape(n, -1)
        # grouped-query attention without repeating keys: the query heads that share a key/value head
        # become extra query rows of that head ([kv_heads, group * n, head_dim]); plain matmuls beat SDPA's
        # per-call overhead for these small shapes
        rq = q.transpose(0, 1).reshape(self.kv_heads, self.group * n, self.head_dim)
        scores = torch.matmul(rq, keys.transpose(1, 2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values)
        return out.view(self.heads, n, self.head_dim).transpose(0, 1).reshape(n, -1)


def _round_up(n: int) -> int:
    return -(-n // _GROW) * _GROW


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _prefill_mask(start: int, n: int, group: int, device=None):
    """Causal mask of ``n`` new tokens after ``start`` cached ones, repeated for the query-head group
    (None for one new token, which sees everything before it)."""
    import torch

    if n == 1:
        return None
    keys, queries = torch.arange(start + n, device=device), torch.arange(start, start + n, device=device)
    allowed = keys[None, :] <= queries[:, None]
    return allowed.repeat(group, 1)


class EnginePolicy(TransformersPolicy):
    """:class:`~refinelib.eval.policies.TransformersPolicy` on the :class:`Engine`: the same settings,
    rendering, stopping and sampling, the same greedy outputs, less work per episode.

    * Shared instructions: a chat's first (system) message, rendered alone, is a token prefix of its
      prompt; its keys/values are computed once per distinct system message and copied into each new
      episode's sequence (every episode of a family, perturbation and step limit shares it).
    * Per-episode cache: each episode's sequence is kept between calls; its next prompt feeds only the
      tokens after the longest prefix it shares with it (the new observation, mostly).
    * Decoding writes into preallocated buffers, a finished row leaves the batch at once (no padding
      rows are computed), and greedy decoding checks a few drafted tokens per step (prompt lookup).

    Args:
        model: a causal LM of an architecture in :data:`SUPPORTED` (LoRA merged), in eval mode.
        tokenizer: its tokenizer, with a chat template.
        share_instructions: encode each distinct system message once (False: per episode, like
            ``TransformersPolicy``; for measuring what the sharing brings).
        max_shared: distinct system messages kept (least recently used dropped first; SmolLM2: ≈ 20 MB each).
        draft_tokens: greedy decoding checks up to this many drafted tokens per row and step (prompt
            lookup: what followed the last ``draft_ngram`` tokens where they occurred before); the output
            is the same, the decode steps fewer when the model copies from its prompt (SmolLM2 on 8 of the
            chapters' episodes x 15 steps: 4 tokens kept 86 % of drafted tokens; 12 kept 71 % and played
            1.1-1.3x faster than 4, the same outputs; 16-24 no faster than 12). 0: no drafts.
        draft_ngram: how many final tokens a draft's lookup matches.
        **kwargs: :class:`~refinelib.eval.policies.TransformersPolicy` settings (``prefix_cache`` is always
        on).
    """

    def __init__(self, model, tokenizer, share_instructions: bool = True, max_shared: int = 16,
                 draft_tokens: int = 12, draft_ngram: int = 3, **kwargs) -> None:
        kwargs.pop("prefix_cache", None)
        super().__init__(model, tokenizer, **kwargs)
        self.engine = Engine(model)
        self.share_instructions, self.max_shared = share_instructions, max_shared
        if draft_tokens < 0 or draft_ngram < 1:
            raise ValueError(f"draft_tokens must be >= 0 and draft_ngram >= 1, not {draft_tokens} and "
                             f"{draft_ngram}")
        self.draft_tokens, self.draft_ngram = draft_tokens, draft_ngram
        self._shared: OrderedDict[tuple, Sequence] = OrderedDict()  # system-message tokens -> their sequence
        self._live: list[Sequence] = []  # the last call's sequences, one per episode
        self._heads: dict[str, list[int]] = {}  # system message -> its tokens rendered alone
        # prompt tokens served from a shared system message; drafted tokens checked / kept
        self.stats.update(shared_tokens=0, drafted=0, accepted=0)

    def config(self):
        return {**super().config(), "engine": "torch", "share_instructions": self.share_instructions,
                "draft_tokens": self.draft_tokens, "draft_ngram": self.draft_ngram}

    def generate(self, batch, envs=None, seeds=None):
        seeds = list(seeds) if seeds is not None else [0] * len(batch)
        size = self.batch_size or max(len(batch), 1)
        prompts = [self._ids(self.render(m)) for m in batch]
        heads = [self._head(m, ids) for m, ids in zip(batch, prompts, strict=True)]
        claimed: set[int] = set()  # sequences of the last call already taken over by a row of this call
        out, live = [], []
        for i in range(0, len(batch), size):
            seqs = self._sequences(prompts[i:i + size], heads[i:i + size], claimed)
            out += self._decode_rows(seqs, prompts[i:i + size], seeds[i:i + size])
            live += seqs
        self._live = live  # the episodes of this call are the ones that call again
        return out

    def close(self) -> None:
        self._live, self._shared = [], OrderedDict()

    # ----- which cached keys/values each prompt starts from -------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _head(self, messages, ids: list[int]) -> tuple | None:
        """The tokens of the chat's system message rendered alone, if they are a prefix of ``ids``."""
        if not self.share_instructions or not messages or messages[0].get("role") != "system":
            return None
        system = messages[0]["content"]
        if system not in self._heads:  # rendered and tokenized once per distinct instruction
            if len(self._heads) > 4 * self.max_shared:
                self._heads.clear()
            self._heads[system] = self._ids(self.tokenizer.apply_chat_template(list(messages[:1]),
                                                                               tokenize=False))
        head = self._heads[system]
        return tuple(head) if 0 < len(head) < len(ids) and ids[:len(head)] == head else None

    def _sequences(self, prompts, heads, claimed: set[int]) -> list[Sequence]:
        """One sequence per prompt holding the longest cached prefix of it (one token at least is left)."""
        matches = [self._best_live(ids) for ids in prompts]
        missing = list(dict.fromkeys(h for h, (n, _) in zip(heads, matches, strict=True)
                                     if h is not None and h not in self._shared and n < len(h)))
        if missing:  # every new system message of this batch in one forward pass
            fresh = [self.engine.new_sequence(len(h)) for h in missing]
            self.engine.forward(fresh, missing)
            self._shared.update(zip(missing, fresh, strict=True))
        for h in heads:
            if h in self._shared:
                self._shared.move_to_end(h)
        while len(self._shared) > self.max_shared:
            self._shared.popitem(last=False)
        starts = []  # (cached tokens, sequence they come from) per row
        for ids, head, (n, seq) in zip(prompts, heads, matches, strict=True):
            if head in self._shared and len(head) > n:
                n, seq = len(head), self._shared[head]
                self.stats["shared_tokens"] += n
            self.stats["prompt_tokens"] += len(ids)
            self.stats["reused_tokens"] += n
            starts.append((n, seq))
        # an episode's own sequence is continued in place by the row that shares most of it (claimed);
        # every other row copies what it reuses (shared instructions, or a sequence another row took)
        live = {id(s) for s in self._live} - claimed
        owner: dict[int, int] = {}
        for row, (n, seq) in enumerate(starts):
            key = id(seq)
            if seq is not None and key in live and (key not in owner or n > starts[owner[key]][0]):
                owner[key] = row
        owned = set(owner.values())
        seqs = [None if row in owned else
                self.engine.fork(seq, n, len(ids) + self.max_new_tokens) if seq is not None else
                self.engine.new_sequence(len(ids) + self.max_new_tokens)
                for row, (ids, (n, seq)) in enumerate(zip(prompts, starts, strict=True))]
        for row in owned:  # after the copies: truncating drops ids another row may have copied
            n, seq = starts[row]
            del seq.ids[n:]
            claimed.add(id(seq))
            seqs[row] = seq
        return seqs

    def _best_live(self, ids: list[int]) -> tuple[int, Sequence | None]:
        best, found = 0, None
        for seq in self._live:
            n = common_prefix(seq.ids, ids, len(ids) - 1)
            if n > best:
                best, found = n, seq
        return best, found

    # ----- decoding ------------------------------------------------------------------------------------
    def _decode_rows(self, seqs, prompts, seeds) -> list[str]:
        import torch

        generators = None  # greedy
        if self.temperature > 0:  # one generator per row: a row's draws do not depend on its batch
            generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]
        logits = self.engine.forward(seqs, [ids[len(seq):] for seq, ids in zip(seqs, prompts, strict=True)])
        rows: list[list[int]] = [[] for _ in seqs]
        active = list(range(len(seqs)))
        chosen = {r: [t] for r, t in zip(active, self._choose(logits, generators).tolist(), strict=True)}
        while True:
            going = []
            for row in active:  # the row's tokens in order, until one ends it
                for token in chosen[row]:
                    if token in self.end_ids:
                        break
                    rows[row].append(token)
                    if self._stopped(rows[row]) or len(rows[row]) == self.max_new_tokens:
                        break
                else:
                    going.append(row)
            active = going
            if not active:
                break
            # only the rows still writing are computed; their sequences grow in place. A row's last token
            # is fed with a draft of what may follow it (copied from its context, greedy only); one pass
            # checks the whole draft and keeps the longest part the model agrees with
            drafts = {r: self._draft(seqs[r].ids, rows[r]) if self.draft_tokens and generators is None else []
                      for r in active}
            fed = [[rows[r][-1], *drafts[r]] for r in active]
            logits = self.engine.forward([seqs[r] for r in active], fed, every=True)
            offset, chosen = 0, {}
            for row, tokens in zip(active, fed, strict=True):
                picks = self._choose(logits[offset:offset + len(tokens)],
                                     None if generators is None else [generators[row]]).tolist()
                offset += len(tokens)
                kept = next((i for i, d in enumerate(drafts[row]) if picks[i] != d), len(drafts[row]))
                self.stats["drafted"] += len(drafts[row])
                self.stats["accepted"] += kept
                del seqs[row].ids[len(seqs[row].ids) - len(tokens) + 1 + kept:]  # rejected draft positions
                chosen[row] = drafts[row][:kept] + [picks[kept]]
        return [self._cut(self._decode(r)) for r in rows]

    def _draft(self, fed: list[int], output: list[int]) -> list[int]:
        """Prompt-lookup draft: the tokens that followed the last earlier occurrence of the context's final
        ``draft_ngram`` tokens (what the model writes is often copied from its prompt), or none. The
        context is ``fed`` (what the row's cache holds) and the output's last token (fed next)."""
        n, last = self.draft_ngram, output[-1]
        room = min(self.draft_tokens, self.max_new_tokens - len(output))
        if room <= 0 or len(fed) < n:
            return []
        tail = fed[len(fed) - n + 1:] + [last]
        for end in range(len(fed) - 1, n - 2, -1):  # an occurrence of tail ending at fed[end]
            if fed[end] == last and fed[end - n + 1:end + 1] == tail:
                return (fed[end + 1:end + 1 + room] + [last])[:room]
        return []

