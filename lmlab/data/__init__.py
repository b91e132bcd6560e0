"""Data: text, tokenizers and what a model is trained to predict (lessons 00, 05, 13).

- :mod:`.text`: the corpus that ships with Python, character/byte tokenizers, next-token batches.
- :mod:`.bpe`: byte-level BPE (training, encoding, SmolLM2's merges) (lesson 13).
- :mod:`.masks`: causal / prefix / encoder-decoder attention masks (lesson 00).
- :mod:`.objectives`: causal LM, prefix LM, span corruption and UL2 as (inputs, targets, masks) (lesson 05).
- :mod:`.span_corruption`: T5's span corruption with its own bookkeeping (lesson 05).

A new tokenizer or pretraining objective goes here.
"""
