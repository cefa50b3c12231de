"""``[model]``: which pretrained model and which LoRA adapter (:class:`ModelConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..models.registry import ALL_LINEAR, AUTO, DTYPES, KINDS, TOY, available, check_name, resolve_kind
from .fields import POSITIVE, Range, setting, validate
from .sections import register_section

__all__ = ["CAUSAL_MODELS", "CLASSIFIERS", "HEAD_MODES", "LORA_TRAIN", "MODELS", "ModelConfig", "is_causal"]

# The built-in model names (fedsqueeze.models.registry) and toy (fl.toy.ToyWorkload, tests); model.name also
# takes a model directory or a hub id.
MODELS = (*available(), TOY)
CAUSAL_MODELS = tuple(n for n in available() if resolve_kind(n) == "causal-lm")  # gsm8k, verbalizers
MODEL_KINDS = (AUTO, *KINDS)
POOLINGS = ("auto", "cls", "mean")
DEVICES = ("cpu", "cuda", "auto")  # classification heads: see fedsqueeze.models.pooling
HEAD_MODES = ("train", "first_round", "frozen")
CLASSIFIERS = ("head", "verbalizer")  # verbalizer: fedsqueeze.data.verbalize
LORA_TRAIN = ("both", "b")  # b: FFA-LoRA, A frozen at its seeded initialisation (docs/ffa-lora.md)


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model and which LoRA adapter.

    Parameters
    ----------
    name
        The model: ``minilm`` (all-MiniLM-L6-v2, classification), ``smollm2-135m`` (causal LM),
        ``tiny-bert`` / ``tiny-llama`` (randomly initialised miniature models, tests only), ``toy`` (a tiny
        in-code workload, tests only), a local directory holding a Hugging Face model (its ``config.json``,
        weights and tokenizer, as ``save_pretrained`` writes them) or a Hugging Face hub id (only with
        ``FEDSQUEEZE_OFFLINE=0``).
    lora_r, lora_alpha, lora_dropout
        LoRA rank, scaling α and dropout of the adapter (PEFT ``LoraConfig``).
    target_modules
        Modules that get a LoRA adapter (short names such as ``q_proj``), or ``all-linear`` (every linear
        layer but the output layer and the classification head); ``None``: the model's default
        (query/value or q_proj/v_proj for the built-ins, PEFT's default for the architecture otherwise).
    max_length
        Tokens per example after truncation.
    num_layers
        Keep only the first this many transformer layers (smoke runs of big models); ``None``: all.
    lora_layers
        Put LoRA on the top this many transformer layers only (PEFT's ``layers_to_transform``); ``None``:
        on every layer. With a causal LM (a verbalizer, gsm8k or instruction tuning), the frozen layers
        below then run once per example and their output is reused across steps, rounds and clients
        (:mod:`fedsqueeze.models.layer_cache`).
    layer_cache_mb
        Memory bound of that reuse, in MiB of cached hidden states; examples beyond it are recomputed.
        ``0`` turns the reuse off (every step runs the whole model).
    pooling
        What a classification head reads: ``cls`` (the BERT pooler over ``[CLS]``), ``mean`` (masked token
        mean, how sentence-transformers models such as MiniLM were trained) or ``auto`` (``mean`` for
        ``minilm``, ``cls`` otherwise).
    device
        Where local training and evaluation run: ``cpu``, ``cuda`` or ``auto`` (``cuda`` when available);
        updates, codecs and aggregation always stay on the CPU.
    head
        What happens to the trainable tensors outside LoRA (a classification head): ``train`` (trained by
        the clients every round and sent densely both ways), ``first_round`` (trained in round 1 only, then
        frozen, the FLM-TopK authors' protocol, so from round 2 on the LoRA update carries all learning) or
        ``frozen`` (never trained: the head keeps its seeded initial values, which every client can make
        itself, so it is never sent). A frozen head costs no bytes. Irrelevant for the verbalizer (no head).
    classifier
        How a classification dataset is classified: ``head`` (a new linear head on the model, see
        :attr:`head`) or ``verbalizer`` (a causal LM only: the prompt is the text and a question, the label
        is the next token among one label word per class, e.g. `` positive`` / `` negative``; see
        :mod:`fedsqueeze.data.verbalize`). The verbalizer has no trainable tensor outside LoRA, so LoRA
        carries all the learning and nothing but the LoRA frame is sent; its training loss is the
        cross-entropy over the label-word logits at the last prompt position.
    kind
        ``causal-lm`` or ``encoder``; ``auto``: the built-in model's own, else ``causal-lm`` when the
        ``architectures`` in its ``config.json`` name a ``...ForCausalLM``. gsm8k and the verbalizer need a
        causal LM.
    dtype
        Precision of the frozen base model: ``float32``, ``bfloat16`` or ``float16``; the LoRA tensors and a
        classification head stay ``float32``.
    lora_train
        Which LoRA factors the clients train: ``both`` (``A`` and ``B``) or ``b`` (FFA-LoRA, Sun et al.,
        ICLR 2024): every ``A`` stays at its seeded initialisation, which every client and the server draw
        alike from ``fl.seed``, so only ``B`` is trained, compressed, sent both ways and aggregated (about
        half the LoRA parameters; with ``A`` shared, ``(mean B)·A`` is exactly the mean of the clients'
        ``B·A``). ``A`` is never sent; ``final_adapter/`` still holds it. Fewer trainable parameters: a
        random ``A`` may cost accuracy (docs/ffa-lora.md). PEFT models only, not ``toy``.
    """

    name: str = setting(
        "minilm", allowed=f"`{'`, `'.join(MODELS)}`, a model directory, or a hub id (`FEDSQUEEZE_OFFLINE=0`)"
    )
    lora_r: int = setting(16, range=POSITIVE)
    lora_alpha: float = setting(32.0, range=POSITIVE)
    lora_dropout: float = setting(0.05, range=Range(0, 1))
    target_modules: tuple[str, ...] | None = setting(
        None, allowed=f"`{ALL_LINEAR}` or a list of module names"
    )
    max_length: int = setting(32, range=POSITIVE)
    num_layers: int | None = setting(None, range=POSITIVE)
    lora_layers: int | None = setting(None, range=POSITIVE)
    layer_cache_mb: int = setting(4096, range=Range(0, note=" (0 turns it off)"))
    pooling: str = setting("auto", choices=POOLINGS)
    device: str = setting("cpu", choices=DEVICES)
    head: str = setting("first_round", choices=HEAD_MODES)
    classifier: str = setting("head", choices=CLASSIFIERS)
    kind: str = setting(AUTO, choices=MODEL_KINDS)
    dtype: str = setting("float32", choices=DTYPES)
    lora_train: str = setting("both", choices=LORA_TRAIN)

    def __post_init__(self) -> None:
        validate(self, "model")
        check_name(self.name)
        if self.lora_train != "both" and self.name == TOY:
            raise ConfigError(
                f"model.lora_train = {self.lora_train!r} needs a PEFT model; the toy workload trains both "
                "factors"
            )
        if self.target_modules is not None:
            targets = self.target_modules
            targets = (targets,) if isinstance(targets, str) else tuple(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(
                    f'model.target_modules must be module names (e.g. ["q_proj", "v_proj"]) or '
                    f'"{ALL_LINEAR}", got {self.target_modules!r}'
                )
            if ALL_LINEAR in targets and len(targets) > 1:
                raise ConfigError(
                    f'model.target_modules = "{ALL_LINEAR}" stands alone, not in a list of names'
                )
            object.__setattr__(self, "target_modules", targets)
        if self.classifier == "verbalizer" and not is_causal(self):
            raise ConfigError(
                f"model.classifier = 'verbalizer' needs a causal LM ({', '.join(CAUSAL_MODELS)} or a causal "
                f"LM directory), not {self.name!r}"
            )

    def trains_head(self, r: int) -> bool:
        """Whether the clients of round ``r`` train the head (per :attr:`head`)."""
        return self.head == "train" or (self.head == "first_round" and r == 1)


def is_causal(model: ModelConfig) -> bool:
    """Whether ``model`` is a causal LM (what gsm8k and the verbalizer need), by its resolved kind
    (:func:`fedsqueeze.models.registry.resolve_kind`: a built-in's own, else ``model.kind`` or ``auto``'s
    reading of ``config.json``). The toy workload is not."""
    return model.name != TOY and resolve_kind(model.name, model.kind) == "causal-lm"


register_section("model", ModelConfig)
