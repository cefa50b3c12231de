"""Datasets shipped inside installed packages, held-out splits, partitioners, collation and metrics.

- :mod:`.sources`: ``rotten_tomatoes`` (binary), ``bbc_news`` (5 topics), ``gsm8k`` (test split only).
- :mod:`.partition`: seeded train/test split; IID, Dirichlet-over-labels and quantity-skew partitions.
- :mod:`.text`: tokenisation and padding; chat-formatted gsm8k examples with answer-only labels.
- :mod:`.metrics`: accuracy, macro-F1, gsm8k final-number exact match.
"""
