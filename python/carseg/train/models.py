"""segmentation-models-pytorch models, built from a config's keys with clear errors."""

from __future__ import annotations

import inspect
from typing import Any

import segmentation_models_pytorch as smp
import torch

from carseg.errors import ConfigError

ARCHITECTURES = {
    name: getattr(smp, name)
    for name in ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
                 "Linknet", "MAnet", "PAN", "UPerNet", "Segformer")
    if hasattr(smp, name)
}


def build_model(arch: str = "Unet", encoder_name: str = "resnet18", classes: int = 1,
                in_channels: int = 3, encoder_weights: str | None = None,
                seed: int | None = None, channels_last: bool = False,
                **kwargs: Any) -> torch.nn.Module:
    """An smp model whose forward maps float [N,3,H,W] to logits [N,classes,H,W].

    `encoder_weights` defaults to None: pretrained weights come from a hub, and carseg
    must run where there is none. `seed` fixes the random initial weights: the config
    builds the model before Catalyst seeds the run, so without it two runs of one config
    start from different weights. `channels_last`: the weights in NHWC, which oneDNN's
    bfloat16 convolutions prefer (a U-Net/resnet18 step at 128 px 20% faster on an
    AVX512-BF16 CPU; no gain in float32); the checkpoint is the same. Unknown keys are
    refused by name.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; "
                          f"expected one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown} for {arch}; "
                          f"accepted: {sorted(accepted)}")
    if encoder_name not in smp.encoders.get_encoder_names():
        raise ConfigError(f"model.encoder_name: unknown encoder {encoder_name!r}")
    if classes != 1:
        raise ConfigError(f"model.classes: carseg segments one class (car), got {classes}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(encoder_name=encoder_name, encoder_weights=encoder_weights,
                    classes=classes, in_channels=in_channels, **kwargs)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def model_spec(config_model: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of build_model from a config's `model` block."""
    spec = {k: v for k, v in config_model.items() if not k.startswith("_")}
    spec.setdefault("arch", "Unet")
    spec.setdefault("encoder_name", "resnet18")
    spec.setdefault("classes", 1)
    spec.setdefault("in_channels", 3)
    return spec
