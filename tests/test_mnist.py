"""MNIST's real loading code on tiny IDX files written in the true format; the net's shapes."""

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from datasets.mnist import MnistDataLoader, normalise, read_idx
from graphs.models.mnist import Mnist, SeedMnist
from tests.conftest import CONFIGS, cli, train
from tests.test_sweep_objectives import check_folds
from utils.errors import UserError
from utils.training.data import set_epoch

MNIST = CONFIGS / "mnist_exp_0.json"


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root, n_train=120, n_test=40, compress=False, seed=0):
    """Tiny MNIST in torchvision's layout: class k images are bright in row band k."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 7, 4:24] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return raw


@pytest.mark.parametrize("compress", [False, True])
def test_folder_mode_reads_idx_files(tmp_path, compress):
    write_mnist(tmp_path, compress=compress)
    config, _ = main.load_config(
        str(MNIST), ["data_mode=folder", f"data_root={tmp_path}", "valid_size=20", "batch_size=16"]
    )
    data = MnistDataLoader(config)
    x, y = next(iter(data.train_loader))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(data.train_loader.sampler) == 100 and len(data.valid_loader.sampler) == 20
    assert len(data.test_loader.sampler) == 40
    assert abs(float(x.mean())) < 3  # standardised, not raw 0..255


def test_folder_mode_trains_above_chance(tmp_path, exps):
    write_mnist(tmp_path / "data", n_train=600, n_test=100)
    train(
        MNIST,
        exps,
        "exp_name=folder",
        "data_mode=folder",
        f"data_root={tmp_path / 'data'}",
        "valid_size=100",
        "max_epoch=3",
        "batch_size=32",
    )
    main.run(
        str(MNIST),
        [
            f"experiments_dir={exps}",
            "exp_name=folder",
            "data_mode=folder",
            f"data_root={tmp_path / 'data'}",
            "valid_size=100",
            "mode=test",
        ],
    )
    import json

    summary = json.loads((exps / "folder" / "summary.json").read_text())
    assert summary["final"]["valid/accuracy"] > 0.5  # chance is 0.1
    assert summary["test/accuracy"] > 0.5


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b"\x00\x00\x08"), "bad magic number"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated"),
        (lambda p: p.write_bytes(b"GIF89a" + bytes(100)), "bad magic number"),
    ],
)
def test_damaged_idx_file_names_the_file(tmp_path, damage, message):
    raw = write_mnist(tmp_path)
    target = raw / "train-images-idx3-ubyte"
    damage(target)
    with pytest.raises(UserError, match=message) as info:
        MnistDataLoader(main.load_config(str(MNIST), ["data_mode=folder", f"data_root={tmp_path}", "valid_size=20"])[0])
    assert str(target) in str(info.value)


def test_labels_out_of_range_are_rejected(tmp_path):
    raw = write_mnist(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(40, 12))
    with pytest.raises(UserError, match="label 12 out of range"):
        MnistDataLoader(main.load_config(str(MNIST), ["data_mode=folder", f"data_root={tmp_path}", "valid_size=20"])[0])


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array)
    assert torch.equal(read_idx(tmp_path / "a"), torch.from_numpy(array))


def test_default_net_is_todays_pytorch_examples_net(exps):
    """The shipped config builds conv 32 -> conv 64 -> fc 128 (pytorch/examples, Keras's mnist_cnn: ~99.2%)."""
    config, agent_class = main.load_config(
        str(MNIST), [f"experiments_dir={exps}", "data_mode=random", "random_size=64"]
    )
    model = agent_class(config).model
    assert type(model) is Mnist
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (32, 64, 128)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == 1_199_882


def test_seed_net_is_kept_selectable(exps):
    config, agent_class = main.load_config(
        str(MNIST), [f"experiments_dir={exps}", "data_mode=random", "random_size=64", "net=seed"]
    )
    model = agent_class(config).model
    assert type(model) is SeedMnist and model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert model.fc1.in_features == 320 and model.conv1.out_channels == 10 and model.conv2.out_channels == 20
    assert sum(p.numel() for p in model.parameters()) == 21840
    with pytest.raises(UserError, match="'net'.*did you mean 'seed'"):
        main.load_config(str(MNIST), ["net=seeed"])


def test_shift_moves_training_images_only_and_repeats_per_epoch(tmp_path):
    """shift=2: each training image is a window of its zero-padded self, offsets drawn per (seed, epoch, batch)."""
    write_mnist(tmp_path)
    overrides = ["data_mode=folder", f"data_root={tmp_path}", "valid_size=20", "batch_size=100", "shift=2"]
    data = MnistDataLoader(main.load_config(str(MNIST), overrides)[0])
    plain = MnistDataLoader(main.load_config(str(MNIST), [*overrides, "shift=0"])[0])

    def epoch(loader, n):
        set_epoch(loader, n, seed=1)
        return next(iter(loader))[0]

    original = epoch(plain.train_loader, 0)
    shifted = epoch(data.train_loader, 0)
    background = float(normalise(torch.zeros(1, 1, 1, dtype=torch.uint8), None)[0])
    padded = torch.nn.functional.pad(original, (2,) * 4, value=background)
    offsets = set()
    for i in range(len(original)):
        found = [
            (t, left)
            for t in range(5)
            for left in range(5)
            if torch.equal(shifted[i], padded[i, :, t : t + 28, left : left + 28])
        ]
        assert found, f"training image {i} is no shifted copy of itself"
        offsets.add(found[0])
    assert len(offsets) > 10  # of the 25 possible
    assert torch.equal(epoch(data.train_loader, 0), shifted)  # the same epoch draws the same shifts
    assert not torch.equal(epoch(data.train_loader, 1), epoch(plain.train_loader, 1))
    for name in ("valid_loader", "test_loader"):  # evaluation sees the images as they are
        assert torch.equal(next(iter(getattr(data, name)))[0], next(iter(getattr(plain, name)))[0])


def test_random_mode_splits_share_their_classes(exps):
    """Random data is learnable, and what is learnt on train carries over to valid and test."""
    args = ["exp_name=rnd", "data_mode=random", "valid_size=200", "random_size=640", "max_epoch=2"]
    train(MNIST, exps, *args)
    train(MNIST, exps, *args, "mode=test")
    import json

    summary = json.loads((exps / "rnd" / "summary.json").read_text())
    assert summary["final"]["valid/accuracy"] > 0.5 and summary["test/accuracy"] > 0.5  # chance is 0.1


def test_default_mnist_offline_exits_2_with_help(tmp_path):
    """The README's first command on a machine without internet: exit 2, where to put files."""
    result = cli(str(MNIST), f"data_root={tmp_path}/data", f"experiments_dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "could not download MNIST" in result.stderr and "data_mode=random" in result.stderr
    assert "add data_mode=folder" in result.stderr and "use data_mode=download" not in result.stderr


def test_empty_mnist_folder_says_where_to_put_files(tmp_path, exps):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(UserError, match="MNIST file not found") as info:
        train(MNIST, exps, "data_mode=folder", f"data_root={tmp_path}", "exp_name=offline")
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)
    assert not (exps / "offline").exists()  # a run that wrote nothing leaves no empty run directory behind


def test_predict_reads_any_image_as_validation_reads_mnist_and_overwrites_nothing(exps, tmp_path):
    """Validation images saved as grey PNGs get the probabilities validation's own path gives them; a colour
    image of another size is converted; a second predict refuses to replace predictions.csv."""
    args = ["exp_name=p", "data_mode=random", "random_size=64", "valid_size=16", "batch_size=16", "torch_threads=1"]
    train(MNIST, exps, *args, "max_epoch=1")
    config, cls = main.load_config(str(MNIST), [f"experiments_dir={exps}", *args, "mode=test"])
    agent = cls(config)
    try:
        agent.load_checkpoint(exps / "p" / "checkpoints" / "best.pth", weights_only=True)
        images, labels = next(iter(agent.data_loader.valid_loader))
        with torch.no_grad():
            expected = torch.softmax(agent.model.eval()(images), dim=1)
        raw = agent.data_loader.valid_loader.dataset.dataset.tensors[0][:3]  # the uint8 images behind the batch
    finally:
        agent.finalize()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, pixels in enumerate(raw):
        Image.fromarray(pixels.numpy(), mode="L").save(photos / f"{i}.png")
    Image.fromarray(np.stack([raw[0].numpy()] * 3 + [np.full((28, 28), 255, np.uint8)], 2)).resize((56, 70)).save(
        photos / "rgba_large.png"
    )
    train(MNIST, exps, *args, "mode=predict", f"predict_input={photos}")
    out = exps / "p" / "out" / "predict" / "predictions.csv"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png", "rgba_large.png"]
    for i, row in enumerate(rows[:3]):
        top = [pair.split(":") for pair in row["top5"].split()]
        assert [name for name, _ in top] == [str(int(k)) for k in expected[i].topk(5).indices]
        assert float(row["probability"]) == pytest.approx(float(expected[i].max()), abs=2e-6)
    assert rows[3]["class"] in [str(d) for d in range(10)]
    before = out.read_bytes()
    with pytest.raises(UserError, match="predictions.csv: written by an earlier mode=predict"):
        train(MNIST, exps, *args, "mode=predict", f"predict_input={photos}")
    assert out.read_bytes() == before
    # A photo cut short: one line naming it, without advising skip_bad_files (not an MNIST key).
    Image.new("RGB", (64, 48), (90, 20, 160)).save(photos / "cut.jpg", quality=95)
    (photos / "cut.jpg").write_bytes((photos / "cut.jpg").read_bytes()[:400])
    out.unlink()
    with pytest.raises(UserError, match=r"cut\.jpg: .*; fix or remove it$"):
        train(MNIST, exps, *args, "mode=predict", f"predict_input={photos}")


def test_folds_of_the_training_file_are_disjoint_and_cover_it():
    settings = ["data_mode=random", "random_size=40", "valid_size=10"]  # folds: valid_size is not used
    check_folds(
        lambda more: MnistDataLoader(main.load_config(str(CONFIGS / "mnist_exp_0.json"), more)[0]), settings, True
    )
