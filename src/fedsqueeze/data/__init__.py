"""Datasets shipped inside installed packages, held-out splits, partitioners, collation and metrics.

- :mod:`.sources`: the built-in registry: ``rotten_tomatoes`` (binary), ``bbc_news`` (5 topics), ``gsm8k``
  (test split only).
- :mod:`.files`, :mod:`.own`: your own ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` files, folders and
  ``hf:`` datasets (read with Hugging Face ``datasets``), mapped by the ``data.*_field`` keys.
- :mod:`.sft`: instruction-tuning examples (prompt / response pairs or chats), labels on the response.
- :mod:`.partition`: seeded train/test split; IID, Dirichlet-over-labels and quantity-skew partitions.
- :mod:`.text`: tokenisation and padding; chat-formatted gsm8k examples with answer-only labels.
- :mod:`.metrics`: accuracy, macro-F1, gsm8k final-number exact match.
"""
