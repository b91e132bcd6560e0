"""The graders' harness for "swap your part in and train" (chapters 01-04, ``lmlab.grading.plugin``).

:func:`train_with_part` runs where the learner's code lives (``call_with(part,
"lmlab.grading.plug_and_train:train_with_part", ...)``) and returns plain values; the check computes lmlab's
own run (``part=None``) itself and compares.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
import torch.nn as nn

from lmlab.data.text import char_data, sample_batch
from lmlab.grading.seeds import exact_global_seed
from lmlab.model import GPT, ModelConfig
from lmlab.model.registry import FFNS, KINDS, plugged
from lmlab.argcheck import check_choice, check_int

__all__ = ["train_with_part"]


def _copy_part_weights(kind: str, mine: nn.Module, ref: nn.Module, cfg) -> None:
    """Load lmlab's weights of one part into the learner's (same function, maybe other names)."""
    with torch.no_grad():
        if kind == "norm":
            for pname, p in mine.named_parameters():  # weight (and bias) by shape
                src = getattr(ref, pname.split(".")[-1], None)
                if isinstance(src, torch.Tensor) and src.shape == p.shape:
                    p.copy_(src)
        elif kind == "activation":  # lmlab: up = [value; gate] (2h, C), down (C, h); HF names on the learner's side
            h = cfg.d_ff
            names = dict(mine.named_modules())
            value, gate = ref.up.weight[:h], ref.up.weight[h:]
            for key, w in (("up_proj", value), ("gate_proj", gate), ("down_proj", ref.down.weight)):
                if key not in names:
                    raise ValueError(f"your FFN must have nn.Linear layers gate_proj, up_proj, down_proj; missing {key}")
                names[key].weight.copy_(w)
        elif kind == "attention":  # lmlab: qkv = [q; k; v], proj; learner: q_proj, k_proj, v_proj, o_proj
            C, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
            names = dict(mine.module.named_modules())
            q, k, v = ref.qkv.weight.split([C, kv, kv])
            for key, w in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", ref.proj.weight)):
                if key not in names:
                    raise ValueError(f"your attention must have nn.Linear layers q_proj, k_proj, v_proj, o_proj; missing {key}")
                names[key].weight.copy_(w)


def train_with_part(part: Any, kind: str, cfg: dict, steps: int = 10, seed: int = 0, lr: float = 3e-3,
                    batch_size: int = 4) -> dict:
    """The model of ``cfg`` (a dict of :class:`lmlab.model.config.ModelConfig` fields) with ``part`` as its
    ``kind`` (``"norm"``, ``"activation"``, ``"position"``, ``"attention"``), started from exactly the
    weights lmlab's own part gets at ``seed``, then ``steps`` Adam steps on fixed batches of the
    course corpus. ``part=None`` runs lmlab's own part (``cfg[kind]``): the reference.

    Returns plain values: ``{"logits": (batch, T, V) tensor before training, "losses": [steps floats]}``.
    FFN and attention parts must use Hugging Face's layer names (``gate_proj``/``up_proj``/``down_proj``;
    ``q_proj``/``k_proj``/``v_proj``/``o_proj``, no bias) so lmlab's weights can be copied in.
    """
    check_choice(kind, "kind", KINDS, where="train_with_part")
    check_int(steps, "steps", "train_with_part", minimum=0)
    if not isinstance(cfg, dict) or kind not in cfg:
        raise ValueError(f"train_with_part: cfg must be a dict of ModelConfig fields naming lmlab's {kind}, got {cfg!r}")
    data = char_data()
    base = ModelConfig(**{**cfg, "vocab_size": cfg.get("vocab_size", data.tok.vocab_size)})
    with exact_global_seed(seed):  # the init draws from torch's global generator: held alone, then restored
        ref = GPT(base)
    model = ref
    with contextlib.ExitStack() as stack:
        if part is not None:
            name = stack.enter_context(plugged(kind, part, **({"gated": FFNS[base.activation].info["gated"]} if kind == "activation" else {})))
            mine_cfg = dataclasses.replace(base, **{kind: name})
            with exact_global_seed(seed):
                model = GPT(mine_cfg)
            try:  # every weight the two models share by name, then the swapped part's own
                model.load_state_dict(ref.state_dict(), strict=False)
            except RuntimeError as err:
                raise ValueError(f"your {kind} part's weights clash with lmlab's names/shapes: {err}") from None
            for mine_block, ref_block in zip(model.blocks, ref.blocks):
                if kind == "norm":
                    for n in ("norm1", "norm2", "attn_out_norm", "ffn_out_norm"):
                        if hasattr(mine_block, n):
                            m, r = getattr(mine_block, n), getattr(ref_block, n)
                            _copy_part_weights(kind, getattr(m, "norm", m), getattr(r, "norm", r), base)
                elif kind == "activation":
                    _copy_part_weights(kind, mine_block.ffn, ref_block.ffn, base)
                elif kind == "attention":
                    _copy_part_weights(kind, mine_block.attn, ref_block.attn, base)
            if kind == "norm" and isinstance(model.final_norm, nn.Module) and not isinstance(model.final_norm, nn.Identity):
                _copy_part_weights(kind, model.final_norm, ref.final_norm, base)
        g = torch.Generator().manual_seed(seed + 1)
        T = base.context_length
        batches = [sample_batch(data.train_ids, batch_size, T, generator=g) for _ in range(max(steps, 1))]
        model.train()
        with torch.no_grad():
            logits = model(batches[0][0]).detach().clone()
        params = [p for p in model.parameters() if p.requires_grad]
        state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        losses = []
        for step, (x, y) in enumerate(batches[:steps], start=1):
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            _adam_step(params, grads, state, step, lr)
            losses.append(float(loss.detach()))
    return {"logits": logits, "losses": losses}


@torch.no_grad()
def _adam_step(params, grads, state, step: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """Adam, written out (torch.optim's first step imports torch._dynamo: seconds a grader cannot spend)."""
    b1, b2 = betas
    for p, g, (m, v) in zip(params, grads, state):
        if g is None:  # a weight the loss does not reach
            continue
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2 ** step)).sqrt_().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1 ** step))
