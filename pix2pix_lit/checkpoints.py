"""Reading checkpoints with errors that name the file and say what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from pix2pix_lit.errors import CheckpointError


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a Lightning checkpoint (tensors memory-mapped), or raise a CheckpointError naming the file."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.ckpt")) or sorted(p.glob("checkpoints/*.ckpt"))
        hint = f" (it holds {', '.join(str(f) for f in found[:3])})" if found else ""
        raise CheckpointError(f"checkpoint {p} is a folder, not a file; pass a .ckpt file in it{hint}")
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} does not exist; pass the path of a .ckpt file (e.g. runs/NAME/checkpoints/last.ckpt)"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {p} cannot be read ({reason[:120]}); the file is truncated or not a checkpoint: "
            "use another one (e.g. last.ckpt or a best-*.ckpt)"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {p} holds no model weights (state_dict); it is not a pix2pix-lit checkpoint")
    return ckpt


def check_checkpoint_fits(model: torch.nn.Module, ckpt: dict[str, Any], path: str) -> None:
    """A CheckpointError saying how the checkpoint's networks differ from the configured model's."""
    ours = model.state_dict()
    theirs = ckpt["state_dict"]
    # EMA generators (G_ema, G_A_ema, ...) may be absent on either side: the model then starts them from
    # their generator, or leaves them out
    missing = sorted(k for k in ours.keys() - theirs.keys() if not is_ema_key(k))
    unexpected = sorted(k for k in theirs.keys() - ours.keys() if not is_ema_key(k))
    shapes = [(k, tuple(theirs[k].shape), tuple(ours[k].shape)) for k in sorted(ours.keys() & theirs.keys())
              if theirs[k].shape != ours[k].shape]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k, a, b = shapes[0]
        detail = f"{len(shapes)} tensor(s) differ in shape, e.g. {k}: {a} in the checkpoint, {b} here"
    else:
        detail = f"{len(missing)} tensor(s) missing (e.g. {missing[:1]}), {len(unexpected)} unknown (e.g. {unexpected[:1]})"
    raise CheckpointError(
        f"checkpoint {path} was made for another architecture than this config ({detail}); use the config the "
        "checkpoint was trained with (data.input_nc/output_nc/label_nc/no_instance, model.netG/netD/ngf/ndf/norm...)"
    )


# -- the state pix2pix-lit adds to Lightning's checkpoints ------------------------------------------------------
def collect_rng_states() -> dict[str, Any]:
    """Global RNG states of torch (CPU, CUDA), numpy and Python, as types ``torch.load(weights_only=True)`` accepts.

    Lightning does not store them; dropout and the image pools draw from them, so exact resume needs them."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


EMA_SUFFIX = "_ema"


def is_ema_key(key: str) -> bool:
    """A state-dict key of an EMA generator (``G_ema.``, ``G_A_ema.`` ...): the one rule for them."""
    return key.split(".", 1)[0].endswith(EMA_SUFFIX)


def align_ema_weights(weights: dict[str, torch.Tensor], name: str, model_has_ema: bool) -> Optional[str]:
    """Make a checkpoint's weights fit a model with or without the EMA of generator ``name``: an absent EMA starts
    from its generator, an unused one is dropped. Returns what was done (for the log), or None."""
    prefix = f"{name}{EMA_SUFFIX}."
    has = any(k.startswith(prefix) for k in weights)
    if model_has_ema and not has:
        for k, v in list(weights.items()):
            if k.startswith(f"{name}."):
                weights[f"{prefix}module.{k[len(name) + 1:]}"] = v.clone()
        weights[f"{prefix}n_averaged"] = torch.tensor(0, dtype=torch.long)
        return f"the checkpoint has no EMA of {name}: {name}{EMA_SUFFIX} starts from its {name}"
    if not model_has_ema and has:
        for k in [k for k in weights if k.startswith(prefix)]:
            del weights[k]
        return f"the checkpoint's EMA of {name} is not used (model.ema_decay is null)"
    return None
