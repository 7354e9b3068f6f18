"""Reading checkpoints with errors that name the file and say what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    def is_ema(key: str) -> bool:
        return key.split(".", 1)[0].endswith("_ema")

    missing = sorted(k for k in ours.keys() - theirs.keys() if not is_ema(k))
    unexpected = sorted(k for k in theirs.keys() - ours.keys() if not is_ema(k))
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
        "checkpoint was trained with (data.input_nc/output_nc, model.netG/netD/ngf/ndf/norm...)"
    )
