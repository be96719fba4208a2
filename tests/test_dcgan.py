"""DCGAN: the networks, the CelebA loader, the sliced Wasserstein distance, and the agent on BaseAgent's loop."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

import main
from agents.dcgan import DCGANAgent
from datasets.celeba import CelebADataLoader, random_blobs
from graphs.models.dcgan_discriminator import DCGANDiscriminator
from graphs.models.dcgan_generator import DCGANGenerator
from tests.conftest import CONFIGS, REPO, assert_same_tensors, load, train
from utils.config import to_easydict, validate
from utils.errors import UserError
from utils.examples.swd import laplacian_pyramid, pyr_down, pyr_up, swd

DCGAN = CONFIGS / "dcgan_exp_0.json"
# Tiny networks on 32x32 synthetic blobs: each epoch is 8 steps of 16 images, validation on 32 held-out images.
TINY = [
    "data_mode=random",
    "image_size=32",
    "ngf=8",
    "ndf=8",
    "batch_size=16",
    "random_size=160",
    "valid_fraction=0.2",
    "num_workers=0",
    "torch_threads=1",  # the same float summation order in every run: resume comparisons are exact
]


# ----- networks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "channels"), [(64, 3), (32, 3), (64, 1), (32, 1)])
def test_generator_and_discriminator_shapes(size, channels, one_thread):
    g = DCGANGenerator(nz=10, ngf=4, channels=channels, image_size=size)
    d = DCGANDiscriminator(ndf=4, channels=channels, image_size=size)
    images = g(torch.randn(3, 10))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1  # Tanh
    assert g(torch.randn(3, 10, 1, 1)).shape == images.shape  # (N, nz, 1, 1) noise works too
    assert d(images).shape == (3,)


def test_parameter_counts_and_initialisation_at_64x64x3(one_thread):
    g, d = DCGANGenerator(), DCGANDiscriminator()  # nz 100, ngf = ndf = 64, 3 channels, 64x64
    assert sum(p.numel() for p in g.parameters()) == 3_576_704  # "about 3.58M"
    assert sum(p.numel() for p in d.parameters()) == 2_765_568  # "about 2.77M"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in list(d.main)[:2])  # none on D's first layer
    modules = [*g.modules(), *d.modules()]
    convs = [m.weight for m in modules if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    weights = torch.cat([w.flatten() for w in convs])
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 2e-4  # N(0, 0.02)
    norms = [m for m in modules if isinstance(m, torch.nn.BatchNorm2d)]
    gammas = torch.cat([m.weight for m in norms])
    assert abs(gammas.mean() - 1) < 2e-3 and abs(gammas.std() - 0.02) < 2e-3  # N(1, 0.02)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_image_sizes_other_than_32_and_64_are_refused():
    with pytest.raises(ValueError, match="image_size must be one of"):
        DCGANGenerator(image_size=48)
    with pytest.raises(UserError, match="key 'image_size': expected one of 32, 64"):
        main.load_config(str(DCGAN), ["image_size=128"])


# ----- sliced Wasserstein distance ------------------------------------------------------------------------

BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256


def reference_blur(x: np.ndarray) -> np.ndarray:
    """The 5x5 binomial filter with mirror borders (d c b | a b c d | c b a), written out in numpy."""
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    h, w = x.shape[2:]
    return sum(BINOMIAL[i, j] * padded[:, :, i : i + h, j : j + w] for i in range(5) for j in range(5))


def test_pyramid_filters_match_the_reference_and_the_pyramid_rebuilds_the_image(one_thread):
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 255
    np.testing.assert_allclose(pyr_down(x).numpy(), reference_blur(x.numpy())[:, :, ::2, ::2], rtol=1e-12)
    spread = np.zeros((2, 3, 32, 32))
    spread[:, :, ::2, ::2] = x.numpy()
    np.testing.assert_allclose(pyr_up(x).numpy(), 4 * reference_blur(spread), rtol=1e-12)
    images = (torch.rand(2, 3, 64, 64) * 255).to(torch.uint8)
    levels = laplacian_pyramid(images, 3)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = pyr_up(rebuilt) + level
    torch.testing.assert_close(rebuilt, images.float(), atol=1e-3, rtol=0)


def test_swd_is_zero_for_identical_sets_symmetric_and_grows_with_the_difference(one_thread):
    def draws():
        return torch.Generator().manual_seed(7)

    blobs = random_blobs(32, 3, 32, seed=1)
    other_blobs = random_blobs(32, 3, 32, seed=2)
    noise = torch.randn(blobs.shape, generator=torch.Generator().manual_seed(3))

    def noisy(amount: float) -> torch.Tensor:
        return (blobs.float() + amount * noise).clamp(0, 255).to(torch.uint8)

    same = swd(blobs, blobs.clone(), draws())
    assert list(same) == [32, 16] and all(v == 0 for v in same.values())
    a, b = swd(blobs, noisy(20), draws()), swd(noisy(20), blobs, draws())
    assert a == b  # symmetric (the same patch positions and directions for both sets)

    def average(x: torch.Tensor) -> float:
        return float(np.mean(list(swd(blobs, x, draws()).values())))

    # Another draw of the same distribution is closest; more noise, farther.
    assert 0 < average(other_blobs) < average(noisy(20)) < average(noisy(60))
    assert swd(blobs, noisy(20), draws()) == a  # reproducible from the generator's seed


def test_swd_levels_follow_the_image_size_and_min_resolution(one_thread):
    x = random_blobs(4, 1, 32, seed=1)
    g = torch.Generator().manual_seed(0)
    assert list(swd(random_blobs(2, 3, 64, seed=1), random_blobs(2, 3, 64, seed=2), g)) == [64, 32, 16]
    assert list(swd(x, x, g)) == [32, 16]
    assert list(swd(x, x, g, min_resolution=32)) == [32]
    with pytest.raises(ValueError, match="one shape"):
        swd(x, x[:2], g)


# ----- data -----------------------------------------------------------------------------------------------


def loader_config(tmp_path, **changes):
    raw = {
        "exp_name": "d",
        "agent": "DCGANAgent",
        "data_mode": "folder",
        "data_root": str(tmp_path),
        "image_folder": "faces",
        "image_size": 32,
        "batch_size": 4,
        "valid_fraction": 0.25,
        **changes,
    }
    return to_easydict(validate(raw, DCGANAgent.config_schema, "dcgan.json"))


def write_faces(root):
    """CelebA-sized JPEGs (178x218), flat and in a sub-folder, plus a wide PNG and a grey one."""
    (root / "faces" / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "faces" / f"{i:06d}.jpg")
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)).save(root / "faces" / "more" / f"{i}.jpg")
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, :100, 2] = wide[:, 200:, 2] = 255  # blue left and right thirds, cropped away
    wide[:, 100:200, 0] = 255  # red middle third, kept
    Image.fromarray(wide).save(root / "faces" / "more" / "wide.png")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(root / "faces" / "grey.png")


def test_folder_mode_reads_odd_sized_images_flat_and_nested_with_a_held_out_split(tmp_path):
    write_faces(tmp_path)
    data = CelebADataLoader(loader_config(tmp_path))
    train_set, valid_set = data.train_loader.dataset.dataset, data.valid_loader.dataset.dataset
    assert len(train_set) + len(valid_set) == 9 and len(valid_set) == 2  # round(0.25 * 9)
    assert set(train_set.samples).isdisjoint(valid_set.samples) and data.test_loader is data.valid_loader
    images, labels = next(iter(data.train_loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == [0, 0, 0, 0]
    jpegs = {p for part in (train_set, valid_set) for p, _ in part.samples if p.suffix == ".jpg"}
    assert len(jpegs) == 7 and {*train_set._scaled, *valid_set._scaled} == jpegs  # 178x218 decoded at 1/4 for 32
    split = next(part for part in (train_set, valid_set) if any(p.name == "wide.png" for p, _ in part.samples))
    wide = split[[p.name for p, _ in split.samples].index("wide.png")][0]
    assert wide.shape == (3, 32, 32) and (wide[0, :, 2:-2] > 200).all() and (wide[2, :, 2:-2] < 50).all()
    again = CelebADataLoader(loader_config(tmp_path)).valid_loader.dataset.dataset.samples
    other = CelebADataLoader(loader_config(tmp_path, seed=2)).valid_loader.dataset.dataset.samples
    assert again == valid_set.samples and other != valid_set.samples  # fixed by the seed


def test_folder_mode_names_a_bad_file_or_skips_it_when_asked(tmp_path):
    write_faces(tmp_path)
    (tmp_path / "faces" / "more" / "notes.txt").write_text("not a face")
    with pytest.raises(UserError, match=r"notes\.txt: not an image.*skip_bad_files=true"):
        CelebADataLoader(loader_config(tmp_path))
    data = CelebADataLoader(loader_config(tmp_path, skip_bad_files=True))
    assert len(data.train_loader.dataset) + len(data.valid_loader.dataset) == 9


def test_missing_images_and_a_failed_download_say_how_to_get_celeba(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"celeba/img_align_celeba: image folder not found\. Download img_align_celeba"):
        CelebADataLoader(loader_config(tmp_path, image_folder="celeba/img_align_celeba"))
    with pytest.raises(UserError, match=r"faces: image folder not found\. Put your images there, or use data_mode"):
        CelebADataLoader(loader_config(tmp_path))  # a folder of the user's own: no advice to download CelebA
    default = str(tmp_path / "celeba" / "img_align_celeba") + "/"  # CelebA's folder, spelt otherwise
    with pytest.raises(UserError, match=r"image folder not found\. Download img_align_celeba"):
        CelebADataLoader(loader_config(tmp_path, image_folder=default))

    class Refused:
        def __init__(self, root, **kwargs):
            raise RuntimeError("Too many users have viewed or downloaded this file recently\nmore")

    monkeypatch.setattr("torchvision.datasets.CelebA", Refused)
    with pytest.raises(UserError) as info:
        CelebADataLoader(loader_config(tmp_path, data_mode="download"))
    message = str(info.value)
    assert "could not download CelebA (Too many users" in message and "\n" not in message
    assert f"JPEGs are in {tmp_path}/celeba/img_align_celeba/" in message and "data_mode=folder" in message
    # Images already there (put by hand): download mode uses them without asking torchvision.
    (tmp_path / "celeba").mkdir()
    write_faces(tmp_path / "celeba")
    (tmp_path / "celeba" / "faces").rename(tmp_path / "celeba" / "img_align_celeba")
    data = CelebADataLoader(loader_config(tmp_path, data_mode="download"))
    assert len(data.train_loader.dataset) == 7


# ----- the agent ------------------------------------------------------------------------------------------


def build(exps, *overrides):
    config, cls = main.load_config(str(DCGAN), [f"experiments_dir={exps}", *TINY, *overrides])
    return cls(config)


def test_train_step_updates_both_networks_and_reports_d_and_g(exps):
    agent = build(exps, "exp_name=step")
    try:
        before = {name: [p.clone() for p in m.parameters()] for name, m in agent.models.items()}
        logs = agent.train_step(next(iter(agent.data_loader.train_loader)))
        assert set(logs) == {"loss", "loss_d", "loss_g", "d_real", "d_fake"}
        assert 0 < float(logs["d_real"]) < 1 and 0 < float(logs["d_fake"]) < 1
        assert float(logs["loss"]) == pytest.approx(float(logs["loss_d"] + logs["loss_g"]))
        for name, model in agent.models.items():
            assert all(not torch.equal(a, b) for a, b in zip(before[name], model.parameters(), strict=True)), name
    finally:
        agent.finalize()


def test_run_writes_sample_grids_gif_and_summary_then_predict_and_test(exps):
    train(DCGAN, exps, "exp_name=run", "max_epoch=2", *TINY)
    run = exps / "run"
    for epoch in (1, 2):
        with Image.open(run / "out" / f"samples_epoch_{epoch:03d}.png") as grid:
            assert grid.size == (8 * 34 + 2, 8 * 34 + 2) and grid.mode == "RGB"  # 8x8 samples of 32x32, 2-pixel padding
    with Image.open(run / "out" / "progress.gif") as gif:
        assert gif.n_frames == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_params_generator"] + summary["num_params_discriminator"] == summary["num_params"]
    assert summary["best"]["metric"] == "valid/swd" and summary["final"]["valid/swd"] > 0
    assert set(summary["final"]) == {"valid/swd", "valid/swd_32", "valid/swd_16"}
    assert (run / "checkpoints" / "best.pth").exists()

    train(DCGAN, exps, "exp_name=run", "mode=predict", "num_samples=5", *TINY)
    files = sorted((run / "out" / "predict").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    with Image.open(files[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    with pytest.raises(UserError, match="holds 5 files of an earlier mode=predict"):
        train(DCGAN, exps, "exp_name=run", "mode=predict", *TINY)

    train(DCGAN, exps, "exp_name=run", "mode=test", *TINY)
    tested = json.loads((run / "summary.json").read_text())
    assert tested["test/swd"] == pytest.approx(summary["best"]["value"])  # the same held-out images and draws
    assert tested["tested_checkpoint"].endswith("best.pth")


def test_the_smoke_config_learns_the_synthetic_blobs(exps, lr_g: float = 0.002):
    """configs/dcgan_exp_smoke.json (the docs' smoke command) takes the SWD to the held-out blobs well below the
    untrained generator's (same images and draws).

    Measured: 370 untrained, best 242 (0.65) within 8 epochs; a generator that does not learn (lr_g=0) stays at 364.
    """
    overrides = [f"experiments_dir={exps}", "exp_name=learn", "torch_threads=1", f"optimizer_g.args.lr={lr_g}"]
    config, cls = main.load_config(str(CONFIGS / "dcgan_exp_smoke.json"), overrides)
    agent = cls(config)
    try:
        untrained = agent.validate()["valid/swd"]
        agent.run()
        assert agent.global_step == 320
        assert agent.monitor.best < 0.8 * untrained, (agent.monitor.best, untrained)
    finally:
        agent.finalize()


def test_resume_is_exact_including_the_fixed_noise(exps):
    train(DCGAN, exps, "exp_name=straight", "max_epoch=2", *TINY)
    train(DCGAN, exps, "exp_name=resumed", "max_epoch=1", *TINY)
    train(DCGAN, exps, "exp_name=resumed", "max_epoch=2", *TINY)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "resumed"))
    assert set(a["models"]) == set(a["optimizers"]) == {"generator", "discriminator"}
    for key in ("models", "optimizers", "extra", "epoch", "global_step", "best"):
        assert_same_tensors(a[key], b[key], key)
    grids = [(exps / n / "out" / "samples_epoch_002.png").read_bytes() for n in ("straight", "resumed")]
    assert grids[0] == grids[1]
    # The fixed noise comes from the checkpoint, not from this run's seed: a continued run renders the same faces.
    agent = build(exps, "exp_name=other", "seed=5", f"resume={exps / 'straight' / 'checkpoints' / 'last.pth'}")
    try:
        assert not torch.equal(agent.fixed_noise, a["extra"]["fixed_noise"])
        agent.load_checkpoint(exps / "straight" / "checkpoints" / "last.pth")
        assert torch.equal(agent.fixed_noise, a["extra"]["fixed_noise"])
    finally:
        agent.finalize()


@pytest.mark.slow
def test_two_processes_train_both_networks_and_validate_as_one_process(exps):
    """Both networks in DDP (torchrun, Gloo); the SWD gathers every rank's held-out shard, so one process agrees."""
    args = [f"experiments_dir={exps}", "exp_name=ddp", *TINY, "batch_size=8", "random_size=84", "max_epoch=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([*cmd, str(DCGAN), *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    run = exps / "ddp"
    assert "x 2 process(es)" in (run / "logs" / "run.log").read_text()
    state = load(run / "checkpoints" / "last.pth")
    assert state["global_step"] == 5 and len(state["rng_ranks"]) == 2  # 67 training images: 34 per rank, batch 8
    two = float(next(csv.DictReader((run / "metrics.csv").open()))["valid/swd"])
    agent = build(exps, "exp_name=one", "random_size=84", f"resume={run / 'checkpoints' / 'last.pth'}")
    try:
        agent.load_checkpoint(run / "checkpoints" / "last.pth")
        assert agent.validate()["valid/swd"] == pytest.approx(two, rel=1e-6)  # 17 held-out images: 9 + 8
    finally:
        agent.finalize()


def test_fp16_trains_both_networks(exps):
    """Two optimizer steps per train_step under one grad scaler (BaseAgent.optimize updates it per step)."""
    train(DCGAN, exps, "exp_name=fp16", "max_epoch=1", "amp=fp16", *TINY)
    state = load(exps / "fp16" / "checkpoints" / "last.pth")
    assert state["scaler"] is not None and state["global_step"] == 8
    summary = json.loads((exps / "fp16" / "summary.json").read_text())
    assert summary["status"] == "finished" and np.isfinite(summary["final"]["valid/swd"])


def test_sample_grids_show_the_averaged_generator_when_the_run_keeps_one(exps):
    train(DCGAN, exps, "exp_name=ema", "max_epoch=1", "max_train_batches=3", "ema_decay=0.5", *TINY)
    state = load(exps / "ema" / "checkpoints" / "last.pth")
    agent = build(exps, "exp_name=render")
    try:
        agent.unwrap(agent.netG).load_state_dict(state["callbacks"]["ema"]["generator"]["module"])
        expected = make_grid(agent.render(state["extra"]["fixed_noise"]), nrow=8, padding=2)
    finally:
        agent.finalize()
    with Image.open(exps / "ema" / "out" / "samples_epoch_001.png") as grid:
        assert torch.equal(torch.from_numpy(np.array(grid)).permute(2, 0, 1), expected)


def test_dcgan_has_no_folds_and_refuses_the_key_in_one_line(capsys):
    assert main.main([str(CONFIGS / "dcgan_exp_0.json"), "data_mode=random", "fold=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'fold'" in err and err.count("\n") == 1


def test_dcgan_sample_grids_go_to_a_real_mlflow_server_as_images(exps, tmp_path):
    """DCGAN's sample grids, through the Recorder, as image artifacts of its MLflow run (tests/test_tracking.py)."""
    from pathlib import Path

    from mlflow.tracking import MlflowClient
    from PIL import Image

    from tests.test_tracking import artifacts, mlflow_server, only_run

    with mlflow_server(tmp_path / "mlflow") as (server, _):
        train(
            DCGAN,
            exps,
            *TINY,
            "max_epoch=2",
            "max_train_batches=2",
            'loggers=["mlflow"]',
            f"mlflow_tracking_uri={server}",
        )
        client = MlflowClient(server)
        run = only_run(client, "dcgan")
        images = [p for p in artifacts(client, run.info.run_id) if p.startswith("images/")]
        local = Path(client.download_artifacts(run.info.run_id, images[-1], str(exps / "down")))
    assert images == ["images/samples/step_00000002.png", "images/samples/step_00000004.png"]
    expected = Image.open(exps / "dcgan_exp_0" / "out" / "samples_epoch_002.png")
    assert Image.open(local).size == expected.size and Image.open(local).tobytes() == expected.tobytes()
