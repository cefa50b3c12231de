"""Learned compression (CG-FedLLM): the factor-stack layout, the ResNet-3 autoencoder, TGAP pre-training,
the model store keyed by fingerprint, controls and the evaluation script.

Import the submodules directly (``fedsqueeze.learned.autoencoder``, ``.tgap``, ...); this package imports
nothing itself so that importing a codec stays light.
"""
