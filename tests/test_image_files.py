"""Image folders through the real loading code: PNG/JPEG files written here, good and damaged.

The template's ``folder`` mode reads torchvision's ImageFolder layout through
datasets/image_files.py; segmentation pairs (image + mask) go through the same class.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import main
from datasets.image_files import ImageFiles
from tests.conftest import CONFIGS, train
from utils.errors import UserError
from utils.run.recorder import DATA_LOG

EXAMPLE = CONFIGS / "example_exp_0.json"
FOLDER = ("data_mode=folder", "image_size=16", "batch_size=8", "num_classes=2")


def save(path: Path, brightness: int, seed: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Path:
    """An image of the given mean brightness plus noise, in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 30, (size[1], size[0], 3))
    pixels = np.clip(brightness + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def image_folders(root: Path, n_train: int = 16, n_valid: int = 6) -> Path:
    """data_root/example/{train,valid}/{dark,bright}/: PNG and JPEG, RGB, grey and RGBA, two sizes."""
    folder = root / "example"
    for split, n in (("train", n_train), ("valid", n_valid)):
        for label, brightness in (("dark", 50), ("bright", 200)):
            for i in range(n):
                suffix, mode = [(".png", "RGB"), (".jpg", "RGB"), (".png", "L"), (".png", "RGBA")][i % 4]
                size = (12, 10) if i % 2 else (20, 16)
                seed = i + brightness * 100 + len(split) * 10_000
                save(folder / split / label / f"{i}{suffix}", brightness, seed, size, mode)
    (folder / "train" / "dark" / ".DS_Store").write_bytes(b"\0\1junk")  # hidden files are not samples
    for hidden in (folder / "train" / ".ipynb_checkpoints", folder / "valid" / "bright" / ".ipynb_checkpoints"):
        hidden.mkdir()
        (hidden / "0-checkpoint.txt").write_text("not a class, not a sample")
    return folder


def cut(path: Path, keep: float = 0.6) -> Path:
    """Truncate a file to a fraction of its bytes (a copy that died half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def cut_jpeg(path: Path) -> Path:
    """A JPEG whose header is whole but whose image data stops half-way: only decoding finds it."""
    return cut(save(path, 200, 7, size=(64, 64)), keep=0.8)


def test_template_learns_from_image_folders(tmp_path, exps):
    image_folders(tmp_path)
    train(EXAMPLE, exps, *FOLDER, f"data_root={tmp_path}", "max_epoch=8", "exp_name=img")
    summary = json.loads((exps / "img" / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["best"]["value"] >= 0.9, summary  # dark vs bright: chance is 0.5


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "train/dark/notes.txt").write_text("hello"), "notes.txt: not an image"),
        (lambda f: (f / "train/bright/0.png").write_bytes(b""), "0.png: not an image"),
        (lambda f: cut(f / "valid/dark/0.png"), r"0.png: not a readable image \(OSError: Truncated File Read\)"),
        (lambda f: (f / "train/README").write_text("x"), "README: a file outside the class folders"),
        (lambda f: (f / "train/empty").mkdir(), "empty: class folder without images"),
        (lambda f: (f / "valid/bright").rename(f / "valid/light"), "different class folders"),
        (lambda f: [p.unlink() for p in (f / "valid/bright").glob("*.*g")], "bright: class folder without images"),
    ],
)
def test_bad_image_folders_name_the_file(tmp_path, capsys, damage, message):
    folder = image_folders(tmp_path, n_train=4, n_valid=4)
    damage(folder)
    with pytest.raises(UserError, match=message) as info:
        train(EXAMPLE, tmp_path / "exps", *FOLDER, f"data_root={tmp_path}")
    assert str(folder) in str(info.value)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "train: image folder not found"),
        ("no classes", "train: no class folders in it"),
        ("three classes", r"3 class folders, the config's num_classes is 2 \(set num_classes=3, or null"),
    ],
)
def test_image_folder_layout_errors(tmp_path, layout, message):
    folder = tmp_path / "example"
    if layout == "no classes":
        (folder / "train").mkdir(parents=True)
    elif layout == "three classes":
        for name in ("a", "b", "c"):
            save(folder / "train" / name / "0.png", 100, 0)
    with pytest.raises(UserError, match=message):
        train(EXAMPLE, tmp_path / "exps", *FOLDER, f"data_root={tmp_path}")


@pytest.mark.parametrize("workers", [0, 1])
def test_image_damaged_past_its_header_stops_with_one_line(tmp_path, capsys, workers):
    """A JPEG cut short opens fine (its header is whole) and fails only when decoded, in training."""
    folder = image_folders(tmp_path, n_train=4, n_valid=2)
    bad = cut_jpeg(folder / "train" / "bright" / "1.jpg")
    exps = tmp_path / "exps"
    code = main.main(
        [str(EXAMPLE), f"experiments_dir={exps}", *FOLDER, f"data_root={tmp_path}", f"num_workers={workers}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"error: {bad}: not a readable image (OSError: image file is truncated"), err[-1]
    assert "Traceback" not in "\n".join(err)
    (log,) = exps.glob("*/logs/run.log")  # the run's log says why it failed, as the terminal did
    assert f"failed: {bad}: not a readable image" in log.read_text().splitlines()[-1]


def test_skip_bad_files_leaves_them_out_and_logs_each(tmp_path, exps):
    folder = image_folders(tmp_path, n_train=8, n_valid=4)
    (folder / "train/dark/notes.txt").write_text("hello")
    cut(folder / "train/bright/0.png")
    truncated_jpeg = cut_jpeg(folder / "valid/dark/1.jpg")  # found only when decoded: replaced by the next sample
    train(EXAMPLE, exps, *FOLDER, f"data_root={tmp_path}", "max_epoch=2", "exp_name=skip", "skip_bad_files=true")
    summary = json.loads((exps / "skip" / "summary.json").read_text())
    log = (exps / "skip" / "logs" / "run.log").read_text()
    assert summary["status"] == "finished"
    assert f"skipped {folder / 'train/bright/0.png'}: not a readable image" in log
    assert f"skipped {folder / 'train/dark/notes.txt'}: not an image" in log
    assert "skipped 2 of 17 samples (skip_bad_files=true)" in log
    assert f"skipped {truncated_jpeg}: not a readable image" in log and "(replaced by the next sample)" in log


# ----- segmentation pairs: image + mask -------------------------------------------------------------------


def pair(folder: Path, name: str, size=(8, 6), mask_size=None, top: int = 1) -> tuple[Path, Path]:
    """An RGB image whose red channel is 40 x its class map, and the class map as a single-channel PNG mask."""
    w, h = size
    classes = np.arange(w * h).reshape(h, w) % (top + 1)
    image = np.stack([classes * 40, np.zeros_like(classes), np.zeros_like(classes)], -1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png")
    mw, mh = mask_size or size
    Image.fromarray(classes.astype(np.uint8)).resize((mw, mh), Image.NEAREST).save(folder / f"{name}_mask.png")
    return folder / f"{name}.png", folder / f"{name}_mask.png"


def test_mask_follows_its_image_through_a_joint_transform(tmp_path):
    samples = [pair(tmp_path, "a", top=3)]
    data = ImageFiles(samples, transform=v2.RandomHorizontalFlip(p=1.0), num_classes=4)
    image, mask = data[0]
    assert image.shape == (3, 6, 8) and mask.shape == (6, 8) and mask.dtype == torch.int64
    assert torch.equal(image[0].long(), mask * 40)  # flipped together
    assert not torch.equal(mask, torch.from_numpy(np.array(Image.open(samples[0][1]), dtype=np.int64)))


def test_mask_of_another_size_is_named(tmp_path):
    samples = [pair(tmp_path, "a"), pair(tmp_path, "b", mask_size=(4, 3))]
    with pytest.raises(UserError, match=r"b_mask.png: mask is 4x3 \(width x height\), its image .*b.png is 8x6"):
        ImageFiles(samples, num_classes=2)


def test_mask_values_out_of_range_are_named_and_255_is_ignored(tmp_path):
    good = ImageFiles([pair(tmp_path, "a", top=1)], num_classes=2)
    assert good[0][1].max() == 1
    border = pair(tmp_path, "border")
    Image.fromarray(np.full((6, 8), 255, np.uint8)).save(border[1])
    assert ImageFiles([border], num_classes=2)[0][1].max() == 255  # VOC's ignored border
    with pytest.raises(UserError, match=r"c_mask.png: mask value 2 out of range 0..1 \(or 255 for ignored pixels\)"):
        ImageFiles([pair(tmp_path, "c", top=2)], num_classes=2)[0]


def test_bad_pairs_are_skipped_and_counted_when_asked(tmp_path, caplog):
    samples = [pair(tmp_path, "a"), pair(tmp_path, "b", mask_size=(4, 3)), (tmp_path / "a.png", tmp_path / "none.png")]
    DATA_LOG.addHandler(caplog.handler)  # the dataset log does not propagate to the root logger caplog watches
    try:
        data = ImageFiles(samples, num_classes=2, skip_bad=True)
    finally:
        DATA_LOG.removeHandler(caplog.handler)
    assert len(data) == 1
    assert "skipped 2 of 3 samples" in caplog.text
    assert "none.png does not exist" in caplog.text and "b_mask.png: mask is 4x3" in caplog.text


def test_a_split_replaces_a_sample_it_cannot_decode_from_itself(tmp_path):
    # Files 0..3; the held-out split is {1, 3} and 1 fails only when decoded: 3 stands in, never 2 (a training one).
    files = [save(tmp_path / f"{i}.png", 40 * (i + 1), i, size=(8, 8)) for i in range(4)]
    cut_jpeg(files[1].with_suffix(".jpg"))
    files[1] = files[1].with_suffix(".jpg")
    data = ImageFiles([(f, i) for i, f in enumerate(files)], skip_bad=True)
    held_out = data.subset([1, 3])
    assert [held_out[i][1] for i in range(2)] == [3, 3]
    assert [data.subset([0, 2])[i][1] for i in range(2)] == [0, 2]


def test_images_decode_to_pils_pixels_whichever_decoder_reads_them(tmp_path):
    """JPEG and 8-bit PNG go through torchvision.io (faster), the rest through PIL: the same pixels either way,
    in RGB and in grey (PIL's own RGB-to-L formula)."""
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(128, 60, (13, 17, 3)), 0, 255).astype(np.uint8)
    files = []
    for i, (mode, suffix) in enumerate(
        [
            ("RGB", ".jpg"),
            ("L", ".jpg"),
            ("RGB", ".png"),
            ("RGBA", ".png"),
            ("L", ".png"),
            ("P", ".png"),
            ("CMYK", ".jpg"),
            ("RGB", ".bmp"),
        ]
    ):
        files.append(tmp_path / f"{i}{suffix}")
        Image.fromarray(pixels).convert(mode).save(files[-1])
    for mode in ("RGB", "L"):
        data = ImageFiles([(f, 0) for f in files], mode)
        for i, path in enumerate(files):
            with Image.open(path) as image:
                expected = torch.from_numpy(np.array(image.convert(mode))).reshape(*image.size[::-1], -1)
            assert torch.equal(data[i][0], expected.permute(2, 0, 1)), (mode, path.name)
        assert set(data._native) == set(files[:5])  # the fast decoder did read the files it can


def png_16_bits(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG of (H, W, 3) ``pixels`` (PIL writes none): its header, its rows unfiltered, its end."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, 2, 0, 0, 0)
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_16_bit_images_are_read_at_their_high_byte_and_32_bit_ones_are_named(tmp_path):
    """PIL's convert clips 16-bit grey at 255 (all but the darkest 1/256 of the range white): grey PNG, TIFF and PGM
    are read at each sample's high byte, as PIL reads 16-bit RGB; 16-bit masks keep their values; 32-bit grey has no
    range to scale from: one error naming the file."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    files = [tmp_path / name for name in ("grey.png", "grey.tif", "grey.pgm", "rgb.png")]
    Image.fromarray(values).save(files[0])
    Image.fromarray(values).save(files[1])
    files[2].write_bytes(b"P5\n256 256\n65535\n" + values.astype(">u2").tobytes())  # PIL: mode I
    png_16_bits(files[3], np.stack([values] * 3, axis=-1))
    high = torch.from_numpy((values >> 8).astype(np.uint8))
    for mode in ("RGB", "L"):
        data = ImageFiles([(f, 0) for f in files], mode)
        for i, path in enumerate(files):
            assert torch.equal(data[i][0], high.expand(len(mode), -1, -1)), (mode, path.name)
        assert not data._native  # torchvision.io would give them as uint16
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(image)
    Image.fromarray(values % 300).save(mask)  # classes beyond 255
    assert torch.equal(ImageFiles([(image, mask)], num_classes=300)[0][1], torch.from_numpy(values % 300).long())
    twelve = tmp_path / "grey12.pgm"  # maxval 4095: a 12-bit camera's
    twelve.write_bytes(b"P5\n256 256\n4095\n" + (values >> 4).astype(">u2").tobytes())
    assert torch.equal(ImageFiles([(twelve, 0)], "L")[0][0], high[None])
    pfm = tmp_path / "depth.pfm"  # float grey, which PIL calls PPM too
    pfm.write_bytes(b"Pf\n4 4\n-1.0\n" + np.ones(16, "<f4").tobytes())
    with pytest.raises(UserError, match=r"depth\.pfm: pixels of 32 bits \(PIL mode F\)"):
        ImageFiles([(pfm, 0)])[0]
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(UserError, match=r"float\.tif: pixels of 32 bits \(PIL mode F\): expected 8 or 16 bits"):
        ImageFiles([(tmp_path / "float.tif", 0)])[0]


def test_masks_decode_to_pils_values_whichever_decoder_reads_them(tmp_path):
    """8-bit palette and grey PNG masks through torchvision.io, packed palettes (4 bits) and 16-bit grey through PIL:
    the same labels; uint8 after the transforms with long_masks=False."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (9, 11)).astype(np.uint8)
    labels[0, 0] = 255
    samples = []
    for i, (mode, options) in enumerate([("P", {}), ("L", {}), ("P", {"bits": 4}), ("I;16", {})]):
        image, mask = tmp_path / f"{i}.jpg", tmp_path / f"{i}_mask.png"
        Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(image)
        Image.fromarray(labels if mode != "I;16" else labels.astype(np.uint16)).convert(mode).save(mask, **options)
        samples.append((image, mask))
    for long_masks in (True, False):
        data = ImageFiles(samples, long_masks=long_masks)
        for i, (_, mask) in enumerate(samples):
            expected = torch.from_numpy(np.array(Image.open(mask)).astype(np.int64))
            got = data[i][1]
            assert got.dtype == (torch.int64 if long_masks or i == 3 else torch.uint8), i
            assert torch.equal(got.long(), expected), i
        assert data._native_masks == {samples[0][1], samples[1][1]}


def smooth_jpeg(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    """A JPEG of colour gradients (red across, blue down) with a dark disc: what a reduced-scale decode keeps."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // width, np.full_like(xs, 90), ys * 255 // height], -1).astype(np.uint8)
    pixels[(ys - height / 2) ** 2 + (xs - width / 2) ** 2 < (min(width, height) / 4) ** 2] = 20
    Image.fromarray(pixels).convert(mode).save(path, quality=95)
    return path


def test_jpegs_a_transform_shrinks_decode_at_a_reduced_scale_with_the_same_picture(tmp_path):
    """min_size: a JPEG is decoded at the smallest of 1/2, 1/4, 1/8 that keeps both sides >= min_size; others (no
    such scale, a PNG) whole. The picture is that of a whole decode shrunk (colours in order, not transposed), and
    at 1/8 the pixels PIL's own reduced decode (draft) gives."""
    files = {
        "eighth": (smooth_jpeg(tmp_path / "a.jpg", 256, 256), (32, 32)),  # at 64: 1/4
        "half": (smooth_jpeg(tmp_path / "b.jpg", 178, 218), (89, 109)),  # CelebA's: at 32, 1/4; at 64, 1/2
        "whole": (smooth_jpeg(tmp_path / "c.jpg", 100, 90), (100, 90)),  # 1/2 is 50x45: whole
        "grey": (smooth_jpeg(tmp_path / "d.jpg", 128, 128, "L"), (64, 64)),  # 1/2
    }
    png = tmp_path / "e.png"
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(png)
    paths = [path for path, _ in files.values()] + [png]
    for mode in ("RGB", "L"):
        data = ImageFiles([(p, 0) for p in paths], mode, min_size=64 if mode == "RGB" else 32)
        if mode == "RGB":
            assert set(data._scaled) == {files[k][0] for k in ("eighth", "half", "grey")}
        for i, path in enumerate(paths):
            image = data[i][0]
            with Image.open(path) as pil:
                whole = torch.from_numpy(np.array(pil.convert(mode))).reshape(pil.height, pil.width, -1)
            shrunk = v2.functional.resize(whole.permute(2, 0, 1), list(image.shape[1:]), antialias=True)
            assert image.shape[0] == (3 if mode == "RGB" else 1) and image.dtype == torch.uint8
            assert (image.float() - shrunk.float()).abs().mean() < 3, (mode, path.name)
        sizes = {name: tuple(data[i][0].shape[:0:-1]) for i, name in enumerate(files)}
        if mode == "RGB":
            assert sizes == {"eighth": (64, 64), **{k: size for k, (_, size) in files.items() if k != "eighth"}}
        else:  # min_size 32: 256x256 at 1/8; 178x218 at 1/4
            assert sizes["eighth"] == (32, 32) and sizes["half"] == (45, 55), sizes
    data = ImageFiles([(files["eighth"][0], 0)], min_size=32)
    with Image.open(files["eighth"][0]) as pil:
        pil.draft("RGB", (32, 32))
        drafted = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    assert drafted.shape == (3, 32, 32) and (data[0][0].int() - drafted.int()).abs().max() <= 2


def test_a_damaged_jpeg_decoded_at_a_reduced_scale_names_the_file(tmp_path):
    bad = cut(smooth_jpeg(tmp_path / "a.jpg", 256, 256))
    data = ImageFiles([(bad, 0)], min_size=32)
    assert set(data._scaled) == {bad}
    with pytest.raises(UserError, match=r"a\.jpg: not a readable image \(OSError: image file is truncated"):
        data[0]


def test_a_jpeg_libjpeg_warns_about_is_decoded_whole_by_torchvision(tmp_path, monkeypatch):
    """Extraneous bytes before the end marker (common in scraped photos): simplejpeg refuses, torchvision.io
    decodes it whole (not PIL, twice as slow), and the transform shrinks it as any other."""
    path = smooth_jpeg(tmp_path / "a.jpg", 256, 256)
    data = path.read_bytes()
    path.write_bytes(data[:-2] + b"\0\0\0" + data[-2:])
    images = ImageFiles([(path, 0)], min_size=32)
    monkeypatch.setattr(ImageFiles, "_decode", lambda *a: pytest.fail("decoded by PIL"))
    assert images[0][0].shape == (3, 256, 256)


def test_the_templates_folders_and_its_predictions_decode_large_jpegs_at_a_reduced_scale(tmp_path):
    from datasets.example import ExampleDataLoader

    folder = image_folders(tmp_path, n_train=4, n_valid=2)
    big = smooth_jpeg(folder / "train" / "dark" / "big.jpg", 128, 128)  # 16 of 128: 1/8
    config, _ = main.load_config(str(EXAMPLE), [*FOLDER, f"data_root={tmp_path}"])
    data = ExampleDataLoader(config)
    assert set(data.train_loader.dataset.dataset._scaled) == {big}  # the small ones (20x16, 12x10): whole
    assert {tuple(images.shape[1:]) for images, _ in data.train_loader} == {(3, 16, 16)}
    _, predict = data.predict_loader(str(big))
    assert set(predict.dataset.dataset._scaled) == {big}  # as in training
