"""CG-FedLLM in one package: the learned codecs, their autoencoder and model store, TGAP pre-training and
the TGAP run phase.

Layering: this package sits above :mod:`fedsqueeze.codecs` and :mod:`fedsqueeze.models` (beside
:mod:`fedsqueeze.flower`). ``codecs`` never imports it; the codec registry only names the two codec modules
(plugin-style, by module path). Only the run phase, :mod:`.tgap_phase`, imports the engine (``fl``);
``tests/test_import_graph.py`` checks both.

Modules:

- codecs: :mod:`.codec_base` (what both codecs share), :mod:`.codec` (``cg_fedllm``, id 30),
  :mod:`.codec_q` (``cg_fedllm_q``, id 31), :mod:`.codec_util` (body prefix, model lookup, size bounds);
- the transform: :mod:`.layout` (factor stack), :mod:`.normalize`, :mod:`.autoencoder`, :mod:`.transform`;
- :mod:`.store`: model files and the process-wide store keyed by fingerprint;
- TGAP: :mod:`.split` (the TGAP/FAF data split), :mod:`.tgap` (pre-training), :mod:`.tgap_phase` (the phase
  of ``fedsqueeze run``);
- :mod:`.controls`, :mod:`.evaluate`: the controls and ``fedsqueeze bench cg``.

Import the submodules directly (``fedsqueeze.cg_fedllm.autoencoder``, ``.tgap``, ...); this package imports
nothing itself so that importing a codec stays light.
"""
