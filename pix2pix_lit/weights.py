"""Local weight files for the ImageNet networks no machine here can download (VGG-19 for the perceptual loss,
AlexNet / VGG-16 for LPIPS): the user brings torchvision's state dict; it is checked by its tensors' names and
shapes (and, when given, its sha256) before use, with one-line errors naming what the file must be. Nothing is
ever replaced by random or other weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch

from pix2pix_lit.errors import ConfigError


def load_features(path: str, expected: dict[str, torch.Tensor], option: str, network: str, source: str,
                  sha256: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision state dict file (or of its ``features`` part), named as
    ``expected`` (``0.weight`` ...), checked. ``option`` and ``network`` name the option and the network in errors,
    ``source`` says where the file comes from."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{option}={path} does not exist; it must be {source}")
    if sha256:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != sha256.lower():
            raise ConfigError(f"{option}={path} has sha256 {digest[:16]}..., not the expected "
                              f"{sha256[:16]}...; the file is another network or damaged")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ConfigError(f"{option}={path} is not a PyTorch state dict ({type(e).__name__}); it must be "
                          f"{source}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{option}={path} holds a {type(state).__name__}, not a state dict; it must be {source}")
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    picked = {k: state.get(k) for k in expected}
    wrong = [k for k, v in picked.items() if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        got = tuple(picked[k].shape) if isinstance(picked[k], torch.Tensor) else "missing"
        raise ConfigError(f"{option}={path} is not {network}: features.{k} is {got}, expected "
                          f"{tuple(expected[k].shape)}; it must be {source}")
    return picked
