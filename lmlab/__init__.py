"""lmlab: the reference implementation behind the course's lessons.

A module per topic, readable top to bottom. Lesson 00 builds :mod:`lmlab.data`,
:mod:`lmlab.masks`, :mod:`lmlab.model` and :mod:`lmlab.train` (``lmlab.generate`` is
:func:`lmlab.decoding.generate`, lesson 07's decoding loop); later chapters add modules.
"""

__version__ = "0.1.0"

from .threads import apply_thread_policy

apply_thread_policy()  # 1 thread on a 2-core laptop, see lmlab.threads (LMLAB_NUM_THREADS overrides)

from .data import ByteTokenizer, CharTokenizer, load_corpus, load_text, sample_batch, unigram_entropy
from .masks import architecture_mask, causal_mask, encoder_decoder_masks, prefix_lm_mask
from .model import GPT, ModelConfig
from .decoding import generate
from .train import evaluate, lm_loss, seed_everything, train

__all__ = [
    "ByteTokenizer", "CharTokenizer", "load_corpus", "load_text", "sample_batch", "unigram_entropy",
    "architecture_mask", "causal_mask", "encoder_decoder_masks", "prefix_lm_mask",
    "GPT", "ModelConfig", "evaluate", "generate", "lm_loss", "seed_everything", "train",
]
