"""The local model zoo: ``configs/zoo.yaml`` names the official pretrained models, and

    pix2pix-lit zoo list                      what there is, and what is already here
    pix2pix-lit zoo fetch NAME [--sha256 HEX] download (where there is a direct link), check, import
    pix2pix-lit predict --zoo NAME --data.root DIR   run it (imported on first use)

The files live in ``$PIX2PIX_LIT_ZOO`` (default ``~/.cache/pix2pix-lit/zoo``): ``NAME.pth`` as its authors
published it, ``NAME.ckpt`` imported (``pix2pix-lit import-official``). Offline, or for the models published only
as archives or behind a web page, ``fetch`` says what to download and where to put it; given the file, it imports
it. A download is written whole or not at all, and one whose sha256 is not the one pinned is removed; a file put
there by hand that is not is refused (and left for you to remove).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from pix2pix_lit.atomic import staged_file
from pix2pix_lit.errors import Pix2PixLitError
from pix2pix_lit.inception import weights_sha256
from pix2pix_lit.official import MODELS, SPADE_PRESETS, import_official

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "configs" / "zoo.yaml"
FIELDS = {"what", "model", "import", "url", "page", "sha256", "config", "data", "test"}


class ZooError(Pix2PixLitError):
    """A zoo model that is not known, not here, or not what was published."""


def zoo_dir() -> Path:
    return Path(os.environ.get("PIX2PIX_LIT_ZOO", Path.home() / ".cache" / "pix2pix-lit" / "zoo")).expanduser()


def load_catalogue(path: Optional[Path] = None) -> dict[str, dict[str, Any]]:
    """The zoo's entries by name (``configs/zoo.yaml``, or ``path``), each checked for what fetch and predict use."""
    import yaml

    path = Path(path or os.environ.get("PIX2PIX_LIT_ZOO_CATALOGUE", CATALOGUE))
    try:
        models = (yaml.safe_load(path.read_text()) or {}).get("models") or {}
    except (OSError, yaml.YAMLError) as e:
        raise ZooError(f"{path} cannot be read as the zoo catalogue ({str(e).splitlines()[0][:120]})") from None
    for name, entry in models.items():
        unknown = set(entry) - FIELDS
        if unknown or entry.get("model") not in MODELS or not (entry.get("url") or entry.get("page")):
            raise ZooError(f"{path}: the entry {name} needs model ({'|'.join(MODELS)}), url or page, and only "
                           f"{', '.join(sorted(FIELDS))}{f' (not {sorted(unknown)[0]})' if unknown else ''}")
    return models


def entry_of(name: str, catalogue: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if name not in catalogue:
        near = [n for n in catalogue if name.lower() in n.lower()] or list(catalogue)[:6]
        raise ZooError(f"{name!r} is not in the zoo; `pix2pix-lit zoo list` shows them (e.g. {', '.join(near[:6])})")
    return catalogue[name]


def download(url: str, dest: Path, sha256: Optional[str], name: str, timeout: float = 30.0) -> str:
    """``url`` into ``dest`` (written whole or not at all); returns its sha256, or raises where it is not ``sha256``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, staged_file(dest) as tmp:
            digest = hashlib.sha256()
            with open(tmp, "wb") as f:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    f.write(block)
            got = digest.hexdigest()
            if sha256 and got != sha256.lower():
                raise ZooError(f"{url} has sha256 {got}, not the {sha256} the zoo pins: not the published file, "
                               "removed")
    except urllib.error.HTTPError as e:
        raise ZooError(f"{url}: HTTP {e.code} ({e.reason}); the file has moved or is gone: find it from the "
                       f"official repository and put it at {dest}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ZooError(f"cannot reach {url} ({reason}): download it where the internet is reachable, put it at "
                       f"{dest}, then run `pix2pix-lit zoo fetch {name}` again to check and import it") from None
    return got


def fetch(name: str, catalogue: dict[str, dict[str, Any]], root: Optional[Path] = None,
          sha256: Optional[str] = None) -> Path:
    """The imported checkpoint of zoo model ``name``: downloaded where it is not here yet (and there is a direct
    link), checked against the pinned sha256, imported once. Returns ``root/NAME.ckpt``."""
    entry = entry_of(name, catalogue)
    root = Path(root or zoo_dir())
    root.mkdir(parents=True, exist_ok=True)
    pth, ckpt = root / f"{name}.pth", root / f"{name}.ckpt"
    pinned = sha256 or entry.get("sha256")
    if not pth.exists():
        if not entry.get("url"):
            what = f" ({entry['what']})" if entry.get("what") else ""
            raise ZooError(f"{name}{what} has no direct download: get its generator file from {entry['page']} and "
                           f"put it at {pth}, then run `pix2pix-lit zoo fetch {name}` again")
        download(entry["url"], pth, pinned, name)
    elif pinned and weights_sha256(pth) != pinned.lower():
        raise ZooError(f"{pth} has sha256 {weights_sha256(pth)}, not the pinned {pinned}: remove it (or fetch the "
                       "published file again)")
    if not ckpt.exists():
        options = dict(entry.get("import") or {})
        preset = options.pop("preset", None)
        if preset is not None:
            options["spade_options"] = dict(SPADE_PRESETS[preset])
        import_official(entry["model"], pth, ckpt, **options)
    return ckpt


def predict_arguments(argv: list[str], catalogue: Optional[dict[str, dict[str, Any]]] = None) -> list[str]:
    """``predict``/``test``/``validate`` ``--zoo NAME ...`` as the arguments it means: the entry's config, its data
    direction (and a CycleGAN's predict direction), the imported checkpoint; the user's own arguments after them."""
    if not argv or argv[0] not in ("predict", "test", "validate") or not any(
            a == "--zoo" or a.startswith("--zoo=") for a in argv):
        return argv
    rest, name = [], None
    it = iter(argv[1:])
    for a in it:
        if a == "--zoo":
            name = next(it, None)
        elif a.startswith("--zoo="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
    if not name:
        raise ZooError("--zoo needs a model name; `pix2pix-lit zoo list` shows them")
    catalogue = catalogue if catalogue is not None else load_catalogue()
    entry = entry_of(name, catalogue)
    ckpt = fetch(name, catalogue)
    config = Path(entry["config"])
    config = config if config.is_absolute() else REPO / config
    extra = [f"--data.{k}={v}" for k, v in (entry.get("data") or {}).items()]
    if entry["model"] == "cyclegan":
        extra.append(f"--model.predict_direction={(entry.get('import') or {}).get('direction', 'AtoB')}")
    return [argv[0], "-c", str(config), *extra, "--ckpt_path", str(ckpt), *rest]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pix2pix-lit zoo", description="The official pretrained models: list, fetch.")
    p.add_argument("--catalogue", type=Path, help="a zoo file other than configs/zoo.yaml")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model, its source, and whether it is here")
    f = sub.add_parser("fetch", help="download (where there is a link), check and import one model")
    f.add_argument("name")
    f.add_argument("--sha256", help="the file's expected sha256 (none is published: pin the one you trust)")
    args = p.parse_args(argv)
    try:
        catalogue = load_catalogue(args.catalogue)
        if args.command == "list":
            root = zoo_dir()
            width = max(map(len, catalogue), default=4)
            for name, entry in catalogue.items():
                state = "imported" if (root / f"{name}.ckpt").exists() else (
                    "downloaded" if (root / f"{name}.pth").exists() else "-")
                source = "direct" if entry.get("url") else "by hand"
                print(f"{name:<{width}}  {entry['model']:<9}  {state:<10}  {source:<7}  {entry.get('what', '')}")
            print(f"({len(catalogue)} models; files in {root}; `pix2pix-lit zoo fetch NAME`)")
            return 0
        ckpt = fetch(args.name, catalogue, sha256=args.sha256)
    except Pix2PixLitError as e:
        print(f"pix2pix-lit zoo: error: {e}", file=sys.stderr)
        return 2
    pth = ckpt.with_suffix(".pth")
    print(f"{args.name}: {ckpt} (from {pth}, sha256 {weights_sha256(pth)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
