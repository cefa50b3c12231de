"""Offline models with LoRA (PEFT) behind the ``Workload`` protocol.

Entry point: :func:`fedsqueeze.models.workload.build_workload`. Models: ``minilm`` (all-MiniLM-L6-v2),
``smollm2-135m`` (SmolLM2-135M-Instruct from GGUF, cached as fp32 safetensors), and the randomly initialised
test models ``tiny-bert`` / ``tiny-llama`` with the real tokenizers. transformers and peft are imported
lazily, inside functions, so importing this package stays cheap.
"""
