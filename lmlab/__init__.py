"""lmlab: the reference implementation behind the course's lessons.

A module per topic, readable top to bottom. Lesson 00 builds :mod:`lmlab.data.text`,
:mod:`lmlab.data.masks`, :mod:`lmlab.model.gpt` and :mod:`lmlab.train.loop` (``lmlab.generate`` is
:func:`lmlab.infer.decoding.generation`, lesson 07's decoding loop); later chapters add modules.
"""

__version__ = "0.1.0"

from lmlab.course.threads import apply_thread_policy

apply_thread_policy()  # 1 thread on a 2-core laptop, see lmlab.course.threads (LMLAB_NUM_THREADS overrides)

from lmlab.data.text import ByteTokenizer, CharTokenizer, load_corpus, load_text, sample_batch, unigram_entropy
from lmlab.data.masks import architecture_mask, causal_mask, encoder_decoder_masks, prefix_lm_mask
from lmlab.model.gpt import GPT, ModelConfig
from lmlab.infer.decoding import generate
from lmlab.train.loop import evaluate, lm_loss, seed_everything, train

__all__ = [
    "ByteTokenizer", "CharTokenizer", "load_corpus", "load_text", "sample_batch", "unigram_entropy",
    "architecture_mask", "causal_mask", "encoder_decoder_masks", "prefix_lm_mask",
    "GPT", "ModelConfig", "evaluate", "generate", "lm_loss", "seed_everything", "train",
]
