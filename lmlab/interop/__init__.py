"""Interop with the outside world's checkpoints (lesson 13).

- :mod:`.hf`: lmlab's LLaMA <-> Hugging Face ``LlamaForCausalLM`` (config and state dict).
- :mod:`.gguf`: GGUF files (llama.cpp's format): SmolLM2-135M into lmlab's own model.

A new checkpoint format gets its own module here.
"""
