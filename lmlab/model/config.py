"""The model's configuration: every architectural choice by name, validated on creation (lesson 00, ``lessons/00_tour``).

:class:`ModelConfig` names each part (norm, where it goes, activation, position scheme, attention) and
checks each name against its table in :mod:`lmlab.model.registry`, so a registered part is a valid choice
here at once. :class:`lmlab.model.gpt.GPT` builds the model from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lmlab.argcheck import check_choice, check_int, check_kv_heads, check_number
from lmlab.model.ffn import glu_hidden_size
from lmlab.model.memory import check_knn_memory
from lmlab.model.positions.rope_scaling import check_rope_scaling
from lmlab.model.registry import ATTENTIONS, FFNS, NORM_PLACEMENTS, NORMS, POSITIONS

__all__ = ["ModelConfig", "GLU_MULTIPLE_OF"]

GLU_MULTIPLE_OF = 8  # default gated hidden size is rounded up to a multiple of this


@dataclass
class ModelConfig:
    """Every architectural choice of the model, validated on creation.

    ``norm``: ``layernorm`` (with a bias if ``bias``) or ``rmsnorm`` (never a bias).
    ``norm_position``: ``pre``, ``post``, ``sandwich`` (pre-LN plus a norm on each sub-layer's
    output before the residual add) or ``deepnorm`` (post-LN with DeepNet's alpha and beta).
    ``activation``: ``gelu``, ``relu``, or the gated ``swiglu`` / ``geglu``.
    ``d_ff``: the FFN hidden size (for gated kinds, the size after gating, so the first projection
    has ``2 * d_ff`` outputs). ``None`` means ``4 * d_model`` for plain FFNs and, for gated ones,
    the parameter-matched ``glu_hidden_size(4 * d_model, 8)`` (2/3 of that, rounded up to a
    multiple of 8: 344 for ``d_model=128``).
    ``n_kv_heads``: key/value heads shared by the query heads (lesson 04): ``None`` = ``n_heads``
    (multi-head), 1 = multi-query, a divisor in between = grouped-query attention.
    ``attention``: ``full`` (causal) or ``sliding_window`` (causal, each token sees its ``window``
    most recent tokens; ``window`` is required then and meaningless otherwise).
    ``position`` (lesson 03): ``learned`` (GPT-2 table), ``none``, ``sinusoidal``, ``t5``
    (relative bias), ``rope`` or ``alibi`` (see :mod:`lmlab.model.positions.encodings`).
    ``n_positions``: rows of the learned table (``position="learned"`` only); ``None`` means
    ``context_length``. To run a trained model at a longer ``context_length`` keep
    ``n_positions`` at the trained length: asking for a position past the table raises a
    ``ValueError`` (learned positions cannot extrapolate) instead of using untrained rows.
    ``rope_base``, ``rope_scaling`` (lesson 06, ``position="rope"`` only): RoPE's base and an
    optional context-extension dict (``linear``, ``ntk``, ``dynamic_ntk``, ``yarn``, ``truncate``: the
    entries of :data:`lmlab.model.positions.rope_scaling.ROPE_SCALINGS`).
    ``n_sink`` (lesson 06): with ``sliding_window``, the first ``n_sink`` tokens stay visible to
    every query (Λ-shaped attention). ``knn_memory`` (lesson 06): ``{"layer": i, "top_k": k,
    "size": M}`` makes layer ``i`` a :class:`lmlab.model.memory.KNNMemoryAttention`.
    """

    vocab_size: int = 256
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # hidden size of the feed-forward block; None means 4 * d_model
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_position: str = "pre"
    activation: str = "gelu"
    position: str = "learned"
    attention: str = "full"
    tie_embeddings: bool = True  # share the token embedding with the output layer (GPT-2)
    n_kv_heads: int | None = None  # lesson 04: None means n_heads (MHA); 1 is MQA; else GQA
    window: int | None = None  # lesson 04: tokens each query sees with attention="sliding_window"
    n_positions: int | None = None  # lesson 03: learned table size; None means context_length
    rope_base: float = 10000.0  # lesson 03: RoPE's base
    rope_scaling: dict | None = None  # lesson 06: RoPE context extension, see lmlab.model.positions.rope_scaling
    n_sink: int = 0  # lesson 06: sink tokens kept visible with attention="sliding_window"
    knn_memory: dict | None = None  # lesson 06: {"layer": i, "top_k": k, "size": M}

    norm_eps: float | None = None  # lesson 01/13: the norm's eps; None = the norm's own default (LayerNorm 1e-5, RMSNorm 1e-6)

    def __post_init__(self):
        where = "ModelConfig"
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            check_int(getattr(self, name), name, where)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"try n_heads in {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]}"
            )
        check_int(self.d_ff, "d_ff", where, allow_none=True)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_number(self.norm_eps, "norm_eps", where, low=0.0, low_inclusive=False, allow_none=True)
        for name, table in (("norm_position", NORM_PLACEMENTS), ("norm", NORMS), ("activation", FFNS), ("position", POSITIONS),
                            ("attention", ATTENTIONS)):
            check_choice(getattr(self, name), name, table.names(), where)
        self.n_kv_heads = check_kv_heads(self.n_kv_heads, self.n_heads, where)
        if ATTENTIONS[self.attention].info.get("needs_window"):
            if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
                raise ValueError(f"ModelConfig.window must be an int >= 1 with attention={self.attention!r}, got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"ModelConfig.window only applies to attention='sliding_window', got window={self.window!r} with attention={self.attention!r}")
        self._check_long_context()
        if self.d_ff is None:
            plain = 4 * self.d_model
            self.d_ff = glu_hidden_size(plain, GLU_MULTIPLE_OF) if FFNS[self.activation].info.get("gated") else plain

    def _check_long_context(self) -> None:
        """Lessons 03 and 06: the position and long-context options."""
        where = "ModelConfig"
        if self.n_positions is not None:
            check_int(self.n_positions, "n_positions", where, allow_none=True)
            if not POSITIONS[self.position].info.get("learned"):
                raise ValueError(f"ModelConfig.n_positions only applies to position='learned', got position={self.position!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 1:
            raise ValueError(f"ModelConfig.rope_base must be a number > 1, got {self.rope_base!r}")
        if POSITIONS[self.position].info.get("rope") and self.head_dim % 2:
            raise ValueError(f"ModelConfig: position={self.position!r} needs an even head_dim = d_model / n_heads, got {self.head_dim}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"ModelConfig: position='sinusoidal' needs an even d_model, got {self.d_model}")
        if self.rope_scaling is not None and self.position != "rope":
            raise ValueError(f"ModelConfig.rope_scaling only applies to position='rope', got position={self.position!r}")
        check_rope_scaling(self.rope_scaling)
        check_int(self.n_sink, "n_sink", where, minimum=0)
        if self.n_sink and not ATTENTIONS[self.attention].info.get("needs_window"):
            raise ValueError(f"ModelConfig.n_sink only applies to attention='sliding_window', got attention={self.attention!r}")
        check_knn_memory(self.knn_memory, self.n_layers)

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``d_model // n_heads`` (HF and CS336's name)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)
