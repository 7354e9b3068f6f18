"""Streamed data (LitData): `prepare shards` writes chunks from folder layouts; the streaming DataModules give the
folder datasets' very tensors, equal batches on every process, and resume mid-epoch exactly from the loader's state
in the checkpoint."""
import json
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from pix2pix_lit.data import PairedDataModule, StreamingPairedDataModule, StreamingUnpairedDataModule
from pix2pix_lit.data.datasets import sample_seed
from pix2pix_lit.errors import ConfigError, DataError
from pix2pix_lit.models import CycleGAN, Pix2Pix
from pix2pix_lit.prepare import main as prepare

from conftest import TINY_MODEL, noise_image, quiet_trainer, write_aligned, write_cityscapes, write_folders

SIZES = dict(load_size=36, crop_size=32, num_workers=0)


def shards(src, out, *extra):
    assert prepare(["shards", str(src), str(out), "--workers", "1", *extra]) == 0
    return out


def records(split_dir) -> int:
    return sum(c["chunk_size"] for c in json.loads((split_dir / "index.json").read_text())["chunks"])


def test_streamed_training_items_are_the_folder_datasets_for_the_same_seed(tmp_path):
    write_aligned(tmp_path / "d" / "train", 9, size=40, seed=1)
    write_aligned(tmp_path / "d" / "val", 3, seed=2)
    out = shards(tmp_path / "d", tmp_path / "s")
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]  # no test split in the source: none written
    assert records(out / "train") == 9 and records(out / "val") == 3
    for direction in ("AtoB", "BtoA"):
        kw = dict(SIZES, seed=5, direction=direction, batch_size=2)
        stream = StreamingPairedDataModule(str(out), **kw)
        folder = PairedDataModule(str(tmp_path / "d"), **kw).make_split("train", train=True)
        loader = stream._stream_loader(stream.make_split("train", train=True))
        seen = []
        for epoch in (0, 1):  # a new shuffle and new crops each epoch, each the folder's for that epoch's seed
            for batch in loader:
                for k, name in enumerate(batch["name"]):
                    ref = folder[(int(name), sample_seed(5, epoch, int(name)))]
                    assert torch.equal(batch["source"][k], ref["source"]) and torch.equal(batch["target"][k], ref["target"])
                    seen.append((epoch, name))
        assert len(seen) == 2 * 8  # drop_last: batches of 2 (one process, one worker: the last sample left out)
        val, folder_val = stream.make_split("val", train=False), PairedDataModule(str(tmp_path / "d"), **kw).val_set()
        assert len(val) == 3 and all(torch.equal(val[i]["source"], folder_val[i]["source"]) for i in range(3))


def test_label_maps_and_instance_edges_stream_as_their_folders_read_them(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train")
    write_cityscapes(root, "val", seed=1)
    out = shards(root, tmp_path / "s", "--layout", "cityscapes", "--label_nc", "35")
    kw = dict(SIZES, label_nc=35, seed=3)
    folder = PairedDataModule(str(root), layout="cityscapes", **kw)
    stream = StreamingPairedDataModule(str(out), **kw)
    ref, got = folder.make_split("val", train=False), stream.make_split("val", train=False)
    assert len(got) == len(ref) == 4
    for i in range(4):
        assert got[i]["name"] == ref[i]["name"]
        assert all(torch.equal(got[i][k], ref[i][k]) for k in ("source", "target", "edges"))
    train = folder.make_split("train", train=True)
    for item in StreamingPairedDataModule(str(out), **kw).make_split("train", train=True):
        i = [train[j]["name"] for j in range(len(train))].index(item["name"])
        assert torch.equal(item["edges"], train[(i, sample_seed(3, 0, i))]["edges"])
    with pytest.raises(ConfigError, match="holds label maps .*set data.label_nc"):
        StreamingPairedDataModule(str(out), **SIZES).make_split("val", train=False)


def test_without_a_val_split_prepare_holds_out_the_folders_val_part(tmp_path):
    write_folders(tmp_path / "d", "train", [f"n{i}" for i in range(10)])
    out = shards(tmp_path / "d", tmp_path / "s", "--layout", "folders", "--val_fraction", "0.3", "--seed", "4")
    folder = PairedDataModule(str(tmp_path / "d"), layout="folders", val_fraction=0.3, seed=4, **SIZES)
    held_out = folder.val_set()
    got = StreamingPairedDataModule(str(out), **SIZES).make_split("val", train=False)
    assert [got[i]["name"] for i in range(len(got))] == [held_out[i]["name"] for i in range(len(held_out))]
    assert records(out / "train") == 7 and records(out / "val") == 3


def fit_streamed(shards_dir, root, workers, ckpt=None, every=None):
    """10 steps of a tiny pix2pix on the streamed shards (batch 2, seeded), a checkpoint every ``every`` steps,
    resumed from ``ckpt``: the model and the DataModule."""
    pl.seed_everything(0)
    dm = StreamingPairedDataModule(str(shards_dir), batch_size=2, **{**SIZES, "num_workers": workers})
    model = Pix2Pix(**TINY_MODEL)
    callbacks = [ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}")] \
        if every else []
    trainer = quiet_trainer(max_steps=10, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=bool(every),
                            default_root_dir=root)
    trainer.fit(model, dm, ckpt_path=ckpt)
    return model, dm


def test_streaming_fit_resumes_mid_epoch_exactly_from_the_loaders_state(tmp_path):
    write_aligned(tmp_path / "d" / "train", 8, seed=1)
    write_aligned(tmp_path / "d" / "val", 2, seed=2)
    out = shards(tmp_path / "d", tmp_path / "s")

    def fit(root, ckpt=None, every=None):
        return fit_streamed(out, root, SIZES["num_workers"], ckpt, every)[0]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    whole = fit(tmp_path / "whole", every=1)  # 4 steps an epoch: step 6 is half-way through the second
    saved = torch.load(tmp_path / "whole" / "step=6.ckpt", weights_only=False)
    (state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["num_samples_yielded"] == 4 and state["current_epoch"] == 2
    assert same(whole, fit(tmp_path / "resumed", ckpt=str(tmp_path / "whole" / "step=6.ckpt")))
    # the baseline that shows what the state does: without it the resumed run restarts the epoch, and differs
    del saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(saved, tmp_path / "no-loader-state.ckpt")
    assert not same(whole, fit(tmp_path / "restarted", ckpt=str(tmp_path / "no-loader-state.ckpt")))


def test_a_resume_with_other_workers_says_it_is_approximate_and_auto_workers_take_the_checkpoints(tmp_path):
    """LitData resumes a streamed epoch exactly only with the saved world size, workers and batch size; otherwise it
    goes on "elastically" (samples skipped or seen twice). A change is one warning naming it; ``num_workers: null``
    (whose choice differs between a CPU and a GPU machine) takes the checkpoint's, so such a resume stays exact."""
    write_aligned(tmp_path / "d" / "train", 8, seed=1)
    write_aligned(tmp_path / "d" / "val", 2, seed=2)
    out = shards(tmp_path / "d", tmp_path / "s")

    def fit(root, workers, ckpt=None, every=None):
        return fit_streamed(out, root, workers, ckpt, every)

    whole, _ = fit(tmp_path / "whole", 2, every=1)
    ckpt = str(tmp_path / "whole" / "step=6.ckpt")
    saved = torch.load(ckpt, weights_only=False)["StreamingPairedDataModule"]["stream_topology"]
    assert saved == {"world_size": 1, "num_workers": 2, "batch_size": 2}
    with pytest.warns(UserWarning, match=r"other settings than its checkpoint's \(num_workers 2 -> 1;.*resume with "
                                         r"the checkpoint's num_workers .* to go on exactly"):
        fit(tmp_path / "one", 1, ckpt=ckpt)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="resuming a streamed epoch")
        auto, dm = fit(tmp_path / "auto", None, ckpt=ckpt)  # on a CPU null would be 0 workers: it takes the 2 saved
    assert dm.num_workers == 2
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), auto.state_dict().values()))


def _unpaired(root):
    rng = np.random.default_rng(0)
    for folder, n in (("trainA", 5), ("trainB", 3), ("testA", 2), ("testB", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(noise_image(rng, 40, 40)).save(root / folder / f"{folder}{i}.jpg", quality=95)
    return root


def test_unpaired_streams_are_two_shuffles_and_resume_exactly(tmp_path):
    out = shards(_unpaired(tmp_path / "d"), tmp_path / "s", "--unpaired")
    # no val split in the source: 10% of each domain held out (at least one image each)
    assert {p.name: records(p) for p in out.iterdir()} == {"trainA": 4, "trainB": 2, "valA": 1, "valB": 1,
                                                           "testA": 2, "testB": 2}
    pairs = []

    class Names(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pairs.append((batch["name_A"][0], batch["name_B"][0]))

    def fit(root, ckpt=None, every=None):
        pl.seed_everything(0)
        dm = StreamingUnpairedDataModule(str(out), batch_size=1, **SIZES)
        model = CycleGAN(netG="resnet_6blocks", ngf=8, ndf=8, fid=False, kid=False)
        callbacks = [Names()] + ([ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1,
                                                  filename="{step}")] if every else [])
        trainer = quiet_trainer(max_steps=10, limit_val_batches=0, callbacks=callbacks,
                                enable_checkpointing=bool(every), default_root_dir=root)
        trainer.fit(model, dm, ckpt_path=ckpt)
        return model

    whole = fit(tmp_path / "whole", every=1)
    epoch = pairs[:4]  # max(|A|, |B|) = 4 steps an epoch: every A once, B cycled
    assert len({a for a, _ in epoch}) == 4 and len({b for _, b in epoch}) == 2
    resumed = fit(tmp_path / "resumed", ckpt=str(tmp_path / "whole" / "step=5.ckpt"))
    assert pairs[10:] == pairs[5:10]
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), resumed.state_dict().values()))
    dm = StreamingUnpairedDataModule(str(out), **SIZES)
    dm.setup("fit")
    assert [len(d) for d in dm.eval_datasets(dm.val_dataset)] == [1, 1]
    # read by index, as the image grids take their fixed samples: A image i with B image i mod |B|
    assert [dm.train_dataset[i]["name_B"] for i in range(3)] == ["trainB0", "trainB2", "trainB0"]
    assert dm.val_dataset[0]["A"].shape == (3, 32, 32) and dm.val_dataset[0]["name_B"] == "trainB1"


def _count_batches(rank, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dm = StreamingPairedDataModule(str(out), batch_size=2, **SIZES)
        names = [n for batch in dm._stream_loader(dm.make_split("train", train=True)) for n in batch["name"]]
        (result / f"{rank}.json").write_text(json.dumps(names))
    finally:
        dist.destroy_process_group()


def test_every_process_gets_as_many_batches(tmp_path):
    from conftest import free_port

    write_aligned(tmp_path / "d" / "train", 11, seed=1)
    write_aligned(tmp_path / "d" / "val", 2, seed=2)
    out = shards(tmp_path / "d", tmp_path / "s", "--workers", "2")  # two chunks, of 6 and 5 samples
    os.environ["TEST_PORT"] = str(free_port())
    mp.start_processes(_count_batches, args=(out, tmp_path), nprocs=2, start_method="fork")
    names = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert len(names[0]) == len(names[1]) >= 4 and not set(names[0]) & set(names[1])


def test_bad_shards_and_options_are_one_line_errors(tmp_path, capsys):
    write_aligned(tmp_path / "d" / "train", 4, seed=1)
    out = shards(tmp_path / "d", tmp_path / "s")
    capsys.readouterr()
    assert prepare(["shards", str(tmp_path / "d"), str(out)]) == 2  # nothing overwritten
    assert "is not empty" in capsys.readouterr().err
    assert prepare(["shards", str(tmp_path / "nowhere"), str(tmp_path / "s2")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "s2").exists()
    (tmp_path / "d" / "train" / "bad.png").write_bytes(b"not a png")
    assert prepare(["shards", str(tmp_path / "d"), str(tmp_path / "s3")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "s3").exists()
    with pytest.raises(DataError, match="shards folder .* does not exist"):
        StreamingPairedDataModule(str(tmp_path / "missing"), **SIZES).make_split("train", train=True)
    with pytest.raises(DataError, match="has no test split"):
        StreamingPairedDataModule(str(out), **SIZES).make_split("test", train=False)
    with pytest.raises(ConfigError, match="max_dataset_size"):
        StreamingPairedDataModule(str(out), max_dataset_size=2, **SIZES)
    with pytest.raises(ConfigError, match="side-by-side image pairs; set data.label_nc 0"):
        StreamingPairedDataModule(str(out), label_nc=3, no_instance=True, **SIZES).make_split("val", train=False)
    unpaired = shards(_unpaired(tmp_path / "u"), tmp_path / "su", "--unpaired")
    with pytest.raises(DataError, match="unpaired shards: use pix2pix_lit.data.StreamingUnpairedDataModule"):
        StreamingPairedDataModule(str(unpaired), **SIZES).make_split("train", train=True)


def test_the_documented_commands_as_a_user_types_them(tmp_path, cli_env):
    """`prepare shards` and `fit` with the shipped overlay, read from docs/scaling.md, each a real process (the
    built-in data's layout, tiny)."""
    import shlex

    from conftest import REPO, run

    # the commands as docs/scaling.md writes them (its CycleGAN pair), with small networks and few steps added
    page = (REPO / "docs" / "scaling.md").read_text()
    block = next(b for b in page.split("```bash\n")[1:] if "prepare shards --unpaired" in b).split("```")[0]
    commands = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("pix2pix-lit ")]
    prepare, fit = commands[-2], commands[-1]
    assert prepare[:2] == ["prepare", "shards"] and fit[0] == "fit"
    fit = [str(REPO / a) if a.startswith("configs/") else a for a in fit]
    write_aligned(tmp_path / "data" / "synthetic" / "train", 6, size=36, seed=1)
    write_aligned(tmp_path / "data" / "synthetic" / "val", 2, size=36, seed=2)
    prepared = run(prepare, cli_env, tmp_path)
    assert "wrote trainA 6, trainB 6, valA 2, valB 2 sample(s)" in prepared.stdout
    run([*fit, "--data.load_size", "36",
         "--data.crop_size", "32", "--model.ngf", "8", "--model.ndf", "8", "--model.fid", "false", "--model.kid", "false",
         "--trainer.max_steps", "7", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", "run"], cli_env, tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "run" / "images").glob("*.png"))[:2] == ["train", "train"]
