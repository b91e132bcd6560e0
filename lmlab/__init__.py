"""lmlab: the reference implementation behind the course's lessons.

One subpackage per layer (see "Where things live" in the README):

- :mod:`lmlab.model`: the GPT, its config, and one registry per kind of part (norms, FFNs, positions, ...).
- :mod:`lmlab.data`: corpus, tokenizers (char, byte, BPE), masks, pretraining objectives.
- :mod:`lmlab.train`: the training loop and its config, optimizers, schedules, spikes, checkpoints, precision.
- :mod:`lmlab.infer`: KV cache, paged cache, tiled attention, decoding, long-context inference tricks.
- :mod:`lmlab.parallel`: data / ZeRO / tensor / pipeline parallelism on real ranks.
- :mod:`lmlab.scaling`: parameter and FLOP counting, scaling-law fits, memory and communication calculators.
- :mod:`lmlab.interop`: Hugging Face and GGUF checkpoints.
- :mod:`lmlab.course`: doctor, thread policy, widgets, the verdict helper, notebooks, each lesson's experiments.
- :mod:`lmlab.grading`: ``check`` / ``lmlab grade`` and one grader module per chapter.

Importing lmlab changes nothing in the process: the thread policy applies when a lesson calls
:func:`lmlab.course.doctor.doctor` or a notebook calls :func:`lmlab.course.threads.apply_thread_policy`.
The names below are lesson 00's; ``train`` is :func:`lmlab.train.loop.train`.
"""

__version__ = "0.1.0"

from lmlab.data.masks import architecture_mask, causal_mask, encoder_decoder_masks, prefix_lm_mask
from lmlab.data.text import ByteTokenizer, CharTokenizer, load_corpus, load_text, sample_batch, unigram_entropy
from lmlab.infer.decoding import generate
from lmlab.model import GPT, ModelConfig
from lmlab.train.loop import evaluate, lm_loss, seed_everything

__all__ = [
    "ByteTokenizer", "CharTokenizer", "load_corpus", "load_text", "sample_batch", "unigram_entropy",
    "architecture_mask", "causal_mask", "encoder_decoder_masks", "prefix_lm_mask",
    "GPT", "ModelConfig", "evaluate", "generate", "lm_loss", "seed_everything",
]
