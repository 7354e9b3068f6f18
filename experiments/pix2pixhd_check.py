"""pix2pixHD's generators here against the official NVIDIA/pix2pixHD code: parameter counts on Cityscapes' 36 input
channels (35 label ids + instance edges), layer names, and the outputs of the same weights on one random input.

    python experiments/pix2pixhd_check.py --official /path/to/NVIDIA-pix2pixHD-checkout

The official code is not part of this repository: bring a checkout (e.g. the search tool's ``fetch`` of
github:NVIDIA/pix2pixHD); only its ``models/networks.py`` is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pix2pix_lit.nets import define_D, define_G


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of NVIDIA/pix2pixHD")
    parser.add_argument("--size", default="256x128", help="WxH of the compared forward pass")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official))
    from models import networks as official  # noqa: E402 - the checkout's

    w, h = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    x = torch.randn(1, 36, h, w)
    print("| network | official parameters | ours | state-dict names and shapes equal | max |output difference| |")
    print("|---|---|---|---|---|")
    for name, ngf in (("global", 64), ("local", 32)):
        theirs = official.define_G(36, 3, ngf, name, 4, 9, 1, 3, "instance")
        ours = define_G(36, 3, ngf, name, "instance", use_dropout=False)
        a, b = theirs.state_dict(), ours.state_dict()
        same = list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
        ours.load_state_dict(a)
        with torch.no_grad():
            diff = (theirs(x) - ours(x)).abs().max().item()
        print(f"| G {name} (ngf {ngf}) | {count(theirs):,} | {count(ours):,} | {same} | {diff:.3g} |")
    theirs_d = official.define_D(39, 64, 3, "instance", False, 2, True)
    ours_d = define_D(39, 64, "multiscale", 3, "instance", num_D=2)
    print(f"| D multiscale (num_D 2, n_layers_D 3) | {count(theirs_d):,} | {count(ours_d):,} | | |")


if __name__ == "__main__":
    main()
