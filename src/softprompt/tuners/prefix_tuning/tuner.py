"""Prefix tuning as a tuner: `method.prefix_tuning`, saved in PEFT's PREFIX_TUNING format.

The prefix is PEFT's own `PrefixEncoder` (an embedding of every layer's keys and values, or
token embeddings behind PEFT's two-layer MLP with `projection: true`). A `PrefixHook` on the
language model (see cache.py) feeds it to every call, so training, option scoring and
generation all run through the backbone's unchanged code paths, for text models and for the
language model inside a BLIP-2 / InstructBLIP or composed model alike.

Saved directories are what `PeftModel.save_pretrained` writes (`adapter_config.json` and
`adapter_model.safetensors` holding `prompt_embeddings`, the (N, layers x 2 x token_dim)
keys and values), so PEFT loads ours and we load PEFT's. With the MLP, PEFT saves only its
output; `prefix_encoder.safetensors` beside it keeps the MLP so that a resumed run goes on
training it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from peft import PrefixTuningConfig
from peft.tuners.prefix_tuning import PrefixEncoder
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from softprompt.artifacts.peft_files import PeftFileError, read_adapter_weights
from softprompt.backbones.base import Backbone, TextBackbone
from softprompt.backbones.prefix_cache import PrefixHook, PrefixShape, prefix_shape
from softprompt.tuners.base import SAVED_TUNERS, TUNERS, TunerBase
from softprompt.tuners.prefix_tuning.config import PrefixTuningSettings

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
ENCODER_FILE = "prefix_encoder.safetensors"
PEFT_KEY = "prompt_embeddings"
# Offset from training.seed, so the prefix's initial values do not repeat a prompt's.
SEED_OFFSET = 7919


def hook_target(lm: TextBackbone) -> nn.Module:
    """The module owning the attention layers that take the prefix: a causal LM's base
    model (what the backbone and the model's own forward both call), a seq2seq decoder."""
    if lm.labels_in_input:
        return lm.model.base_model
    return lm.model.get_decoder()


def model_geometry(backbone: Backbone) -> tuple[Any, PrefixShape]:
    """The language model's config and where a prefix goes in it."""
    lm = backbone.lm
    config = lm.model.config
    return config, prefix_shape(config, seq2seq=not lm.labels_in_input)


def peft_config(
    backbone, num_tokens: int, projection: bool, encoder_hidden_size: int | None
) -> PrefixTuningConfig:
    """The `PrefixTuningConfig` PEFT would build for this backbone, every size spelled out."""
    _, shape = model_geometry(backbone)
    return PrefixTuningConfig(
        task_type=backbone.peft_task_type(),
        base_model_name_or_path=backbone.peft_base_name(),
        num_virtual_tokens=num_tokens,
        token_dim=shape.token_dim,
        num_attention_heads=shape.kv_heads,
        num_layers=shape.num_layers,
        num_transformer_submodules=shape.submodules,
        encoder_hidden_size=encoder_hidden_size or shape.token_dim,
        prefix_projection=projection,
    )


class PrefixTuner(TunerBase):
    """A prefix of `num_virtual_tokens` keys and values in every attention layer.

    Args:
        backbone: the backbone whose language model takes the prefix.
        config: its PEFT config (sizes must fit the model).
        learning_rate: the prefix's learning rate.
        trainable: False for a loaded prefix (then only the keys and values are kept, as
            PEFT does in inference mode).
    """

    name = "prefix_tuning"
    adapter = "prefix"

    def __init__(
        self, backbone, config: PrefixTuningConfig, learning_rate: float, trainable: bool
    ) -> None:
        text_config, self.shape = model_geometry(backbone)
        check_fits(config, self.shape, "this model")
        self.config = config
        self.learning_rate = learning_rate
        self.trainable = trainable
        self.enabled = True
        config.inference_mode = not trainable
        self.encoder = PrefixEncoder(config).to(backbone.lm.word_embeddings().device)
        self.encoder.requires_grad_(trainable)
        self.hook = PrefixHook(
            hook_target(backbone.lm),
            self.table,
            config.num_virtual_tokens,
            self.shape,
            text_config,
        )

    @classmethod
    def create(cls, settings: PrefixTuningSettings, backbone, learning_rate: float, seed: int):
        """A new prefix, initialised as PEFT does (N(0, 1) embeddings, default Linear init)
        from a generator seeded by the run."""
        config = peft_config(
            backbone, settings.num_virtual_tokens, settings.projection, settings.encoder_hidden_size
        )
        # PEFT's modules draw from the global CPU generator: seed it here and put it back.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed + SEED_OFFSET)
            return cls(backbone, config, learning_rate, trainable=True)

    @classmethod
    def from_dir(cls, backbone, directory: Path) -> PrefixTuner:
        """A frozen prefix from a directory saved by us or by `PeftModel.save_pretrained`."""
        config = read_prefix_config(directory)
        tuner = cls(backbone, config, learning_rate=0.0, trainable=False)
        tuner.load(directory)
        return tuner

    def table(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, layers * 2 * token_dim) every layer's keys and values (PEFT's `get_prompt`)."""
        encoder = self.encoder
        if self.config.inference_mode:
            table = encoder.embedding.weight
        else:
            tokens = torch.arange(
                self.config.num_virtual_tokens, device=encoder.embedding.weight.device
            )
            table = encoder(tokens)
        return table if dtype is None else table.to(dtype)

    def modules(self) -> dict[str, nn.Module]:
        return {"prefix": self.encoder}

    def set_enabled(self, enabled: bool) -> None:
        self.hook.enabled = enabled
        self.enabled = enabled

    def remove(self) -> None:
        """Take the hook off the model (the tuner no longer acts, even when enabled)."""
        self.hook.remove()

    def save(self, directory: Path, context: dict[str, Any]) -> None:
        """PEFT's files (config with `inference_mode: true`, as PEFT saves it), plus the MLP
        when the prefix trains through one."""
        directory.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            table = self.table(torch.float32).detach().cpu().contiguous()
        save_file({PEFT_KEY: table}, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        if self.config.prefix_projection and not self.config.inference_mode:
            state = {
                k: v.detach().float().cpu().contiguous()
                for k, v in self.encoder.state_dict().items()
            }
            save_file(state, str(directory / ENCODER_FILE), metadata={"format": "pt"})
        saved = copy.copy(self.config)
        saved.inference_mode = True
        saved.save_pretrained(str(directory))

    def load(self, directory: Path) -> None:
        """Load a prefix saved by `save` or by PEFT; a trainable projected prefix loads its
        MLP (resume), anything else the saved keys and values.

        Raises:
            PeftFileError: the files are missing or damaged, or do not fit this prefix.
        """
        directory = Path(directory)
        check_fits(read_prefix_config(directory), self.shape, str(directory), self.config)
        if self.config.prefix_projection and not self.config.inference_mode:
            self._load_encoder(directory)
            return
        table = read_adapter_weights(directory).get(PEFT_KEY)
        weight = self.encoder.embedding.weight
        if table is None or tuple(table.shape) != tuple(weight.shape):
            found = None if table is None else tuple(table.shape)
            raise PeftFileError(
                f"{directory}: {PEFT_KEY} should be {tuple(weight.shape)}, found {found}"
            )
        with torch.no_grad():
            weight.copy_(table.to(weight.device, weight.dtype))

    def _load_encoder(self, directory: Path) -> None:
        path = directory / ENCODER_FILE
        if not path.is_file():
            raise PeftFileError(
                f"{directory}: no {ENCODER_FILE}; a PEFT prefix saved with prefix_projection "
                "holds only the MLP's output, so it can be used but not trained further "
                "through the MLP"
            )
        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise PeftFileError(f"{path}: unreadable ({err})") from None
        try:
            self.encoder.load_state_dict(state)
        except RuntimeError as err:
            raise PeftFileError(f"{path}: does not fit this prefix ({err})") from None


def check_fits(
    config: PrefixTuningConfig,
    shape: PrefixShape,
    where: str,
    own: PrefixTuningConfig | None = None,
) -> None:
    """Refuse a prefix config whose sizes differ from the model's (or from this tuner's).

    Raises:
        PeftFileError: naming the first size that differs.
    """
    expected = {
        "num_layers": shape.num_layers,
        "token_dim": shape.token_dim,
        "num_attention_heads": shape.kv_heads,
        "num_transformer_submodules": shape.submodules,
    }
    if own is not None:
        expected["num_virtual_tokens"] = own.num_virtual_tokens
    for key, value in expected.items():
        found = getattr(config, key, None)
        if found != value:
            raise PeftFileError(
                f"{where}: prefix {key} is {found}, the model needs {value}; was it trained "
                "on another base model?"
            )


def read_prefix_config(directory: Path) -> PrefixTuningConfig:
    """The `PrefixTuningConfig` of an adapter directory, refusing other adapter types."""
    path = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PeftFileError(f"{path}: not a readable adapter config ({err})") from None
    kind = raw.get("peft_type") if isinstance(raw, dict) else None
    if kind != "PREFIX_TUNING":
        raise PeftFileError(
            f"{directory} holds a {kind} adapter; prefix tuning needs PREFIX_TUNING"
        )
    return PrefixTuningConfig.from_pretrained(str(directory))


@TUNERS.register("prefix_tuning")
def build_prefix_tuner(config, backbone) -> PrefixTuner | None:
    """`method.prefix_tuning` of a run config, when enabled."""
    settings = config.method.prefix_tuning
    if not settings.enabled:
        return None
    rate = settings.learning_rate or config.training.learning_rate
    return PrefixTuner.create(settings, backbone, rate, config.training.seed)


@SAVED_TUNERS.register("prefix_tuning")
def load_saved_prefix(backbone, bundle, adapter) -> PrefixTuner:
    """A bundle's prefix, frozen, on `backbone`'s language model."""
    return PrefixTuner.from_dir(backbone, adapter.path)
