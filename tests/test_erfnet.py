"""ERFNet on VOC: the net's shapes, IoU on hand-built cases, joint transforms, a tiny VOC tree
written in the real format, class weights, learning on synthetic shapes, exact resume, and the
pictures, test and predict outputs."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

import main
from agents.erfnet import LABEL_HEIGHT, ERFNetAgent
from datasets import voc
from datasets.voc import IGNORE, MEAN, STD, VocDataLoader, on_device, pad_collate, train_transform
from graphs.models.erfnet import ERFNet
from tests.conftest import CONFIGS, REPO, assert_same_tensors, load, train
from utils.errors import UserError
from utils.examples.palette import VOC_PALETTE
from utils.run.recorder import Recorder
from utils.training.data import make_loader
from utils.training.metrics import ConfusionMatrix

ERFNET = CONFIGS / "erfnet_exp_0.json"
# Tiny synthetic runs: 32x32 crops of images up to 40x40, one torch thread (exact and fast on a shared CPU).
TINY = [
    "data_mode=random",
    "num_classes=4",
    "crop_size=32",
    "random_image_size=40",
    "random_size=16",
    "batch_size=4",
    "torch_threads=1",
    "num_workers=0",
    "class_weights=null",
    "show_images=3",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(*overrides: str):
    return main.load_config(str(ERFNET), list(overrides))[0]


# ----- the network ---------------------------------------------------------------------------


def test_erfnet_has_the_papers_shapes_and_parameter_count():
    model = ERFNet(21)
    assert sum(p.numel() for p in model.parameters()) == 2_067_030  # the paper's "2.06M" (21 classes: VOC)
    assert len(model.encoder.layers) == 1 + 5 + 1 + 8 and len(model.decoder.layers) == 6
    dilations = [layer.conv3x1_2.dilation[0] for layer in model.encoder.layers[7:]]
    assert dilations == [2, 4, 8, 16, 2, 4, 8, 16]
    x = torch.randn(2, 3, 48, 40)
    assert model(x).shape == (2, 21, 48, 40)
    assert model(x, encoder_only=True).shape == (2, 21, 6, 5)
    with pytest.raises(ValueError, match="divisible by 8, got 44x40"):
        model(torch.randn(1, 3, 44, 40))


# ----- the metric ----------------------------------------------------------------------------


def test_confusion_matrix_iou_on_hand_built_cases():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]]])
    perfect = ConfusionMatrix(4)
    perfect.update(target.clamp(max=3), target)
    assert perfect.compute() == 1.0 and perfect.pixel_accuracy() == 1.0
    assert math.isnan(perfect.class_iou()[3])  # class 3 in neither truth nor prediction: no IoU, not averaged

    # Ignored pixels count nowhere, whatever is predicted there.
    wrong_on_ignored = ConfusionMatrix(4)
    wrong_on_ignored.update(torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 0]]]), target)
    assert wrong_on_ignored.compute() == 1.0 and float(wrong_on_ignored.state.sum()) == 6

    # Class 0: 2 right, 1 more predicted -> 2/3; class 1: 1 right of 2, none extra -> 1/2; class 2: 2/2 -> 1;
    # class 3 predicted once, never true -> 0 (present in the prediction, so averaged in).
    scores = torch.nn.functional.one_hot(torch.tensor([[[0, 0, 0, 1], [2, 2, 3, 3]]]), 4).permute(0, 3, 1, 2)
    m = ConfusionMatrix(4)
    m.update(scores.float(), target)  # class scores (N, C, H, W) are argmaxed
    assert m.class_iou() == pytest.approx([2 / 3, 1 / 2, 1.0, float("nan")], nan_ok=True)
    assert m.compute() == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m.pixel_accuracy() == pytest.approx(5 / 6)

    # Two shards (two DDP ranks) summed are the whole set; reduce() sums the same state over ranks.
    pred = torch.tensor([[[0, 0, 0, 1], [2, 2, 3, 3]]])
    halves = [ConfusionMatrix(4), ConfusionMatrix(4)]
    halves[0].update(pred[..., :2], target[..., :2])
    halves[1].update(pred[..., 2:], target[..., 2:])
    summed = ConfusionMatrix(4)
    summed.state = halves[0].state + halves[1].state
    assert torch.equal(summed.state, m.state) and summed.compute() == m.compute()


def test_padded_validation_batches_count_only_the_real_pixels():
    g = torch.Generator().manual_seed(0)
    samples = [
        (torch.randn(3, h, w, generator=g), torch.randint(0, 3, (h, w), generator=g)) for h, w in [(13, 21), (30, 9)]
    ]
    x, y = pad_collate(samples)
    assert x.shape == (2, 3, 32, 24) and y.shape == (2, 32, 24)  # the largest, rounded up to multiples of 8
    assert (y[0, 13:] == IGNORE).all() and (y[0, :, 21:] == IGNORE).all()
    black = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)]).view(3, 1)
    assert torch.equal(x[0, :, 13:].flatten(1), black.expand(3, 19 * 24))  # black, as training's crops are padded

    def predict(image: torch.Tensor) -> torch.Tensor:  # any per-pixel rule: padding must not change the count
        return (image[..., 0, :, :] > 0).long() + (image[..., 1, :, :] > 0.5).long()

    batched, single = ConfusionMatrix(3), ConfusionMatrix(3)
    batched.update(predict(x), y)
    for image, mask in samples:
        single.update(predict(image[None]), mask[None])
    assert torch.equal(batched.state, single.state) and float(single.state.sum()) == 13 * 21 + 30 * 9


# ----- transforms ----------------------------------------------------------------------------


def blocks(h: int, w: int, seed: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An image of 16x16 blocks of random grey levels; its mask is drawn from its own pixels (level // 32)."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 8, (-(-h // 16), -(-w // 16)), generator=g) * 32 + 16
    grey = levels.repeat_interleave(16, 0).repeat_interleave(16, 1)[:h, :w]
    image = grey.expand(3, h, w).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(grey // 32)


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    return (image * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255


@pytest.mark.parametrize(("scale", "least"), [((1.0, 1.0), 1.0), ((0.5, 2.0), 0.7)])
def test_joint_transforms_keep_image_and_mask_aligned(scale, least):
    transform = train_transform(32, *scale)
    agreements, mirrored = [], []
    for seed in range(12):
        image, mask = blocks(40, 27, seed)
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        grey = unnormalise(out_image)[0].round()
        padding = out_mask == IGNORE
        assert torch.allclose(grey[padding], torch.zeros(1), atol=1)  # padded where the image was smaller than 32
        kept = ~padding
        agree = (grey[kept] // 32 == out_mask[kept]).float().mean()
        assert agree >= least, (seed, float(agree))  # exact without scaling; bilinear edges blur otherwise
        agreements.append(float(agree))
        mirrored.append(float((grey.flip(-1)[kept.flip(-1)] // 32 == out_mask[kept]).float().mean()))
        assert set(out_mask[kept].unique().tolist()) <= set(range(8))  # nearest-neighbour: no new labels
    # The check can fail: the same masks against the mirrored images agree far less.
    assert sum(mirrored) / len(mirrored) < sum(agreements) / len(agreements) - 0.2, (agreements, mirrored)


def test_scale_crop_flip_resizes_only_the_window_as_the_whole_scaled_image_would_be():
    """At scale 2 a 16x16 source window becomes the 32x32 crop: the pixels of the whole image scaled, then cropped
    there (masks exactly; images but their border row and column, where the window's edge clamps); at scale 0.5
    the whole image, padded (image 0, mask 255) at a drawn place. Every window and padding place is reachable."""
    image, mask = blocks(40, 27, 0)
    image = tv_tensors.Image(image + torch.arange(27, dtype=torch.uint8))  # not flat inside the blocks
    big = TF.resize(image, [80, 54]), TF.resize(mask, [80, 54])
    small = TF.resize(image, [20, 14]), TF.resize(mask, [20, 14])
    starts, pads = set(), set()
    for seed in range(150):
        for scale in (2.0, 0.5):
            transform = voc.ScaleCropFlip(32, scale, scale)
            torch.manual_seed(seed)
            params = transform.params(*image.shape[-2:])
            out_image, out_mask = transform.image(image, params), transform.mask(mask, params)
            (top, height, _, pad_top), (left, width, _, pad_left) = params["rows"], params["cols"]
            flip = (lambda x: x.flip(-1)) if params["flip"] else (lambda x: x)
            if scale == 2.0:
                assert (height, width) == (16, 16) and 0 <= top <= 24 and 0 <= left <= 11
                starts.add((top, left))
                expected = [x[..., 2 * top : 2 * top + 32, 2 * left : 2 * left + 32] for x in big]
                assert torch.equal(out_mask, flip(expected[1]))
                inner = (flip(out_image) - expected[0].int()).abs()[:, 1:-1, 1:-1]
                assert int(inner.max()) <= 1, seed
            else:
                assert (top, height, left, width) == (0, 40, 0, 27)
                pads.add((pad_top, pad_left))
                rows, cols = slice(pad_top, pad_top + 20), slice(pad_left, pad_left + 14)
                assert torch.equal(out_mask[rows, cols], flip(small[1])) and torch.equal(
                    out_image[:, rows, cols], flip(small[0])
                )
                assert int((out_mask == IGNORE).sum()) == 32 * 32 - 20 * 14 and int(out_image.sum()) == int(
                    small[0].sum()
                )
    assert {t for t, _ in starts} >= {0, 24} and {s for _, s in starts} >= {0, 11}  # the first and last windows
    assert {p for p, _ in pads} >= {0, 12} and {p for _, p in pads} >= {0, 18}  # padding before: none to all


def test_scale_crop_flip_gives_torchvisions_resize_of_its_window_flipped_and_padded():
    """Any scale and size: the image is torchvision's resize of the window, and the mask torchvision's nearest
    resize of it (ScaleCropFlip indexes), each flipped and padded as drawn; the mask row-major in memory."""
    generator = torch.Generator().manual_seed(0)
    for seed in range(120):
        h, w = (int(v) for v in torch.randint(9, 90, (2,), generator=generator))
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator).permute(2, 0, 1)
        mask = torch.randint(0, 21, (h, w), dtype=torch.uint8, generator=generator)
        transform = voc.ScaleCropFlip(48, 0.3, 3.0)
        torch.manual_seed(seed)
        params = transform.params(h, w)
        (top, height, out_h, pad_top), (left, width, out_w, pad_left) = params["rows"], params["cols"]
        window = (slice(top, top + height), slice(left, left + width))
        expected_image = TF.resize(tv_tensors.Image(image[:, window[0], window[1]]), [out_h, out_w])
        expected_mask = TF.resize(tv_tensors.Mask(mask[window]), [out_h, out_w])
        if params["flip"]:
            expected_image, expected_mask = expected_image.flip(-1), expected_mask.flip(-1)
        placed = (slice(pad_top, pad_top + out_h), slice(pad_left, pad_left + out_w))
        torch.manual_seed(seed)  # the same draws again
        out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_image.shape == (3, 48, 48) and out_mask.shape == (48, 48)
        assert torch.equal(out_image[:, placed[0], placed[1]], expected_image), seed
        assert torch.equal(out_mask[placed], expected_mask) and out_mask.is_contiguous(), seed
        assert int(out_image.sum()) == int(expected_image.sum()) and int((out_mask == IGNORE).sum()) == 48 * 48 - (
            out_h * out_w
        )
    # torch's nearest indices (float32 arithmetic: float64's differ in about 4% of sizes) for many sizes.
    for source in range(1, 256, 3):
        row = torch.arange(source, dtype=torch.uint8).view(1, 1, 1, source)
        for out in range(1, 700, 11):
            expected = torch.nn.functional.interpolate(row, size=(1, out), mode="nearest").view(-1).long()
            assert torch.equal(voc._nearest(source, out), expected), (source, out)


def _shared_in_worker(samples: list) -> torch.Tensor:
    return torch.tensor([t.is_shared() for t in voc.uint8_batch(samples)])


def test_a_workers_training_batch_is_stacked_straight_into_shared_memory():
    """The batch goes to the main process through shared memory: stacked there, not copied there afterwards."""
    samples = [(torch.zeros(8, 8, 3, dtype=torch.uint8).permute(2, 0, 1), torch.zeros(8, 8, dtype=torch.uint8))] * 4
    loader = torch.utils.data.DataLoader(samples, batch_size=2, num_workers=1, collate_fn=_shared_in_worker)
    assert [flags.tolist() for flags in loader] == [[True, True]] * 2


# ----- folder mode on a VOC tree written here --------------------------------------------------


def palette_png(path: Path, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.flatten().tolist())
    image.save(path)


def voc_tree(root: Path, sizes=((45, 37), (40, 32), (33, 50), (48, 41)), val=((37, 29), (24, 40))) -> dict:
    """data_root/VOCdevkit/VOC2012 with JPEGs, palette PNG masks (255 borders) and the two lists; pixel counts."""
    tree = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    counts = np.zeros(21, dtype=np.int64)
    for split, shapes in (("train", sizes), ("val", val)):
        ids = []
        for i, (h, w) in enumerate(shapes):
            name = f"2007_{split}{i:02d}"
            mask = np.zeros((h, w), dtype=np.int64)
            mask[h // 4 : h // 2, w // 4 : 3 * w // 4] = 1 + 2 * i  # an object...
            mask[h // 4 - 1, w // 4 : 3 * w // 4] = IGNORE  # ...with VOC's ignored border above it
            mask[-5:, :] = 15
            palette_png(tree / "SegmentationClass" / f"{name}.png", mask)
            image = np.clip(rng.normal(100, 30, (h, w, 3)) + 80 * (mask[..., None] % 3), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tree / "JPEGImages" / f"{name}.jpg", quality=95)
            if split == "train":
                counts += np.bincount(mask[mask != IGNORE], minlength=21)
            ids.append(name)
        (tree / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return {"tree": tree, "counts": counts}


def test_folder_mode_reads_the_voc_tree(tmp_path):
    voc_tree(tmp_path)
    data = VocDataLoader(
        config("data_mode=folder", f"data_root={tmp_path}", "crop_size=32", "batch_size=4", "num_workers=0")
    )
    x, y = next(iter(data.train_loader))  # uint8, standardised on the device (on_device)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (4, 32, 32) and y.dtype == torch.uint8
    assert set(y.unique().tolist()) <= {0, 1, 3, 5, 7, 15, IGNORE}  # palette indices, not RGB colours
    x, y = next(iter(data.valid_loader))
    # one whole image per validation batch, padded to multiples of 8 (34x29 -> 40x32)
    assert x.shape == (1, 3, 40, 32) and y.shape == (1, 40, 32)
    assert int((y[0] != IGNORE).sum()) == 37 * 29 - 14  # all of image 0 but its ignored border
    assert data.test_loader is data.valid_loader  # mode=test evaluates val: VOC's test masks are not public


def test_training_batches_equal_the_samples_transformed_one_by_one(tmp_path):
    """The loader augments uint8 samples, the device standardises whole batches (on_device): the numbers of
    train_transform (augment, then normalise) applied to each sample as the loader seeds it, then stacked."""
    voc_tree(tmp_path)
    loader = VocDataLoader(
        config("data_mode=folder", f"data_root={tmp_path}", "crop_size=32", "batch_size=4", "num_workers=0")
    ).train_loader
    one_by_one = copy.copy(loader.dataset.dataset)
    one_by_one.transform = train_transform(32, 0.5, 2.0)
    x, y = on_device(*next(iter(loader)))
    expected_x, expected_y = next(iter(make_loader(one_by_one, 4, train=True, seed=1)))
    assert x.dtype == torch.float32 and torch.equal(x, expected_x) and torch.equal(y, expected_y)
    assert x.is_contiguous() and y.dtype == torch.int64


def test_sbd_trainaug_reads_its_grey_masks_from_their_own_folder(tmp_path, capsys):
    # SBD's augmented set: another list and grey PNG masks in SegmentationClassAug/; val stays VOC's.
    tree = voc_tree(tmp_path)["tree"]
    (tree / "SegmentationClassAug").mkdir()
    for name, size in (("2007_train00", (45, 37)), ("2007_train01", (40, 32))):  # (height, width) of the JPEGs
        grey = Image.fromarray(np.full(size, 7, dtype=np.uint8), mode="L")
        grey.save(tree / "SegmentationClassAug" / f"{name}.png")
    (tree / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2007_train00\n2007_train01\n")
    aug = ["data_mode=folder", f"data_root={tmp_path}", "crop_size=32", "batch_size=2", "num_workers=0"]
    data = VocDataLoader(config(*aug, "train_split=trainaug", "train_masks=SegmentationClassAug", "scale_min=1.0"))
    _, y = next(iter(data.train_loader))
    assert set(y.unique().tolist()) <= {7, IGNORE} and (y == 7).any()
    assert data.valid_loader.dataset.dataset.samples[0][1].parent.name == "SegmentationClass"
    args = ["class-weights", "--data-root", str(tmp_path), "--split", "trainaug", "--masks", "SegmentationClassAug"]
    assert voc.main(args) == 0
    cache = json.loads((tmp_path / "voc_class_weights_trainaug_SegmentationClassAug.json").read_text())
    assert [i for i, n in enumerate(cache["pixel_counts"]) if n] == [7]


def test_folder_mode_names_what_is_missing_or_wrong(tmp_path):
    with pytest.raises(UserError, match=r"VOCdevkit/VOC2012: Pascal VOC 2012 folder not found.*data_mode=random"):
        VocDataLoader(config("data_mode=folder", f"data_root={tmp_path}"))
    tree = voc_tree(tmp_path)["tree"]
    with pytest.raises(UserError, match=r"Segmentation/trainaug.txt: VOC list of the 'trainaug' split not found"):
        VocDataLoader(config("data_mode=folder", f"data_root={tmp_path}", "train_split=trainaug"))
    palette_png(tree / "SegmentationClass" / "2007_val01.png", np.full((24, 40), 30))
    data = VocDataLoader(config("data_mode=folder", f"data_root={tmp_path}", "num_workers=0"))
    with pytest.raises(UserError, match=r"2007_val01.png: mask value 30 out of range 0..20 \(or 255"):
        list(data.valid_loader)  # values are checked when the mask is decoded
    (tree / "JPEGImages" / "2007_val01.jpg").unlink()
    with pytest.raises(UserError, match=r"2007_val01.jpg: not a readable image"):
        VocDataLoader(config("data_mode=folder", f"data_root={tmp_path}"))
    with pytest.raises(UserError, match="'crop_size': must be a multiple of 8"):
        config("crop_size=100")


# ----- class weights -------------------------------------------------------------------------


def test_class_weight_command_caches_the_enet_weights(tmp_path, capsys, caplog, exps):
    counts = voc_tree(tmp_path)["counts"]
    expected = 1 / np.log(1.02 + counts / counts.sum())  # ENet: frequent classes weigh less
    assert voc.main(["class-weights", "--data-root", str(tmp_path)]) == 0
    assert "person" in capsys.readouterr().out
    cache = json.loads((tmp_path / "voc_class_weights_train.json").read_text())
    assert cache["pixel_counts"] == counts.tolist() and cache["weights"] == pytest.approx(expected.tolist())
    assert cache["weights"][0] < cache["weights"][15] < cache["weights"][1] < cache["weights"][2]

    # The agent reads the cache (a marked copy proves it), and recomputes when the list or a mask changes.
    cache["weights"] = [float(i + 1) for i in range(21)]
    (tmp_path / "voc_class_weights_train.json").write_text(json.dumps(cache))
    folder = ["data_mode=folder", f"data_root={tmp_path}", "crop_size=32", "class_weights=auto", "torch_threads=1"]
    agent = ERFNetAgent(config(f"experiments_dir={exps}", *folder))
    assert agent.loss.weight.tolist() == [float(i + 1) for i in range(21)] and agent.loss.ignore_index == IGNORE
    agent.finalize()
    # A mask drawn again (the list as it was) is noticed too: the weights are those of the new masks.
    tree = tmp_path / "VOCdevkit" / "VOC2012"
    mask = np.array(Image.open(tree / "SegmentationClass" / "2007_train00.png"))
    palette_png(tree / "SegmentationClass" / "2007_train00.png", np.where(mask == IGNORE, IGNORE, 7))
    redrawn = voc.folder_class_weights(tmp_path, 21)
    assert redrawn != cache["weights"] and redrawn != expected.tolist()
    assert json.loads((tmp_path / "voc_class_weights_train.json").read_text())["pixel_counts"][7] > counts[7]
    (tree / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_train00\n")
    assert voc.folder_class_weights(tmp_path, 21) != redrawn
    # A cache from before the masks' digest (keyed by the list's alone) is recomputed, and not called unreadable.
    stored = json.loads((tmp_path / "voc_class_weights_train.json").read_text())
    old = {k: v for k, v in stored.items() if k != "masks_sha256"}
    (tmp_path / "voc_class_weights_train.json").write_text(
        json.dumps({**old, "weights": [1.0] * 21, "list_sha256": "0"})
    )
    caplog.clear()
    assert voc.folder_class_weights(tmp_path, 21) == stored["weights"]
    assert "unreadable" not in caplog.text and "computing class weights" in caplog.text
    assert voc.main(["class-weights", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "ImageSets/Segmentation/train.txt: VOC list" in capsys.readouterr().err


# ----- training ------------------------------------------------------------------------------


def test_erfnet_learns_the_random_shapes(exps):
    # Two shape classes and background at 32x32: ERFNet's 1/8 bottleneck is 4x4 here, which it learns in seconds.
    learn = ["num_classes=3", "random_size=32", "max_epoch=6", "optimizer.args.lr=0.002", "scale_min=0.75"]
    train(ERFNET, exps, "exp_name=learn", *TINY, *learn, "scale_max=1.25", "show_images=0")
    with open(exps / "learn" / "metrics.csv", newline="") as f:
        ious = [float(row["valid/mean_iou"]) for row in csv.DictReader(f)]
    assert len(ious) == 6 and max(ious[1:]) > max(1.5 * ious[0], ious[0] + 0.1), ious


def test_resume_is_exact(exps):
    run = [*TINY, "max_train_batches=2", "num_workers=1"]  # augmentation in a worker: seeded per sample
    # A schedule over the whole run ("total") depends on max_epoch, which this test raises on resume.
    run.append("scheduler=null")
    train(ERFNET, exps, "exp_name=straight", "max_epoch=2", *run)
    train(ERFNET, exps, "exp_name=resumed", "max_epoch=1", *run)
    train(ERFNET, exps, "exp_name=resumed", "max_epoch=2", *run)
    a, b = (load(exps / name / "checkpoints" / "last.pth") for name in ("straight", "resumed"))
    for key in ("models", "optimizers", "epoch", "global_step", "best"):
        assert_same_tensors(a[key], b[key], key)


def test_augmentation_on_the_device_trains_the_same_weights_as_in_the_loader(tmp_path, exps):
    """augment_on=device (device=cpu runs the GPU's code path): the loader only decodes, the agent scales, crops
    and flips each whole image, seeded as the loader seeds it: the same weights, on VOC files and random shapes."""
    voc_tree(tmp_path)
    for data in (["data_mode=folder", f"data_root={tmp_path}", "num_classes=21"], ["data_mode=random"]):
        run = [*TINY, *data, "max_epoch=2", "num_workers=1", "show_images=0"]
        train(ERFNET, exps, *run, f"exp_name=loader{len(data)}")
        train(ERFNET, exps, *run, "augment_on=device", "device=cpu", f"exp_name=device{len(data)}")
        a, b = (load(exps / f"{name}{len(data)}" / "checkpoints" / "last.pth") for name in ("loader", "device"))
        assert_same_tensors(a["models"], b["models"], "models")


def test_predict_checks_its_input_before_its_earlier_outputs(exps, tmp_path):
    """A damaged input image is told before the masks of an earlier mode=predict are refused (and left alone)."""
    earlier = exps / "run" / "out" / "predict" / "street_mask.png"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier mask")
    (tmp_path / "street.png").write_text("not an image")
    with pytest.raises(UserError, match=r"street\.png: not an image"):
        train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={tmp_path / 'street.png'}", *TINY)
    assert earlier.read_bytes() == b"an earlier mask"


def test_pictures_test_mode_predict_and_encoder_checkpoint(tmp_path, exps, monkeypatch):
    train(ERFNET, exps, "exp_name=run", "max_epoch=1", "max_train_batches=1", *TINY)
    run = exps / "run"
    picture = torch.from_numpy(np.array(Image.open(run / "out" / "valid_epoch_001.png"))).permute(2, 0, 1)
    sizes = [x.shape[-2:] for x, _ in islice(VocDataLoader(config(*TINY)).valid_loader, 3)]  # padded to 8s
    width = max(w for _, w in sizes)  # image | truth | prediction, under a header naming them
    assert picture.shape == (3, LABEL_HEIGHT + sum(h for h, _ in sizes), 3 * width)
    assert picture[:, :LABEL_HEIGHT, 3 : width - 3].max() > 200  # a label in each column
    assert picture[:, :LABEL_HEIGHT, width + 3 : 2 * width - 3].max() > 200
    assert picture[:, :LABEL_HEIGHT, 2 * width + 3 :].max() > 200
    h, w = sizes[0]
    truth = picture[:, LABEL_HEIGHT : LABEL_HEIGHT + h, width : width + w].permute(1, 2, 0).reshape(-1, 3)
    palette = {tuple(c) for c in VOC_PALETTE[[0, 1, 2, 3, IGNORE]].tolist()}
    assert {tuple(c) for c in truth.tolist()} <= palette  # the ground truth drawn in VOC's colours
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["class_iou"]) == {"class_0", "class_1", "class_2", "class_3"}
    assert 0 <= summary["final"]["valid/pixel_accuracy"] <= 1

    train(ERFNET, exps, "exp_name=run", "mode=test", *TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["test/mean_iou"] <= 1 and summary["tested_checkpoint"].endswith("best.pth")
    assert summary["test/class_iou"].keys() == {"class_0", "class_1", "class_2", "class_3"}

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((29, 45, 3), 90, dtype=np.uint8)).save(photos / "street.jpg")
    Image.fromarray(np.full((16, 24, 3), 200, dtype=np.uint8)).save(photos / "room.png")
    (photos / "notes.txt").write_text("not an image: left alone")
    train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={photos}", *TINY)
    made = sorted(p.name for p in (run / "out" / "predict").iterdir())
    assert made == ["room_mask.png", "room_overlay.png", "street_mask.png", "street_overlay.png"]
    mask = Image.open(run / "out" / "predict" / "street_mask.png")
    assert mask.size == (45, 29) and mask.mode == "RGB"
    with pytest.raises(UserError, match="'predict_input': mode=predict needs an image file or a folder"):
        train(ERFNET, exps, "exp_name=run", "mode=predict", *TINY)
    before = (run / "out" / "predict" / "room_mask.png").read_bytes()
    with pytest.raises(UserError, match=r"room_mask.png: written by an earlier mode=predict \(2 file"):
        train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={photos / 'room.png'}", *TINY)
    assert (run / "out" / "predict" / "room_mask.png").read_bytes() == before
    Image.fromarray(np.full((8, 8, 3), 9, dtype=np.uint8)).save(photos / "yard.png")
    train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={photos / 'yard.png'}", *TINY)  # a new one
    assert (run / "out" / "predict" / "yard_overlay.png").exists()
    # A photo cut short is one line advising skip_bad_files, with nothing of that run left (so the advised rerun is
    # not refused); with it, the others are predicted, each once.
    more = tmp_path / "more"
    more.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(more / "m_cut.jpg", quality=95)  # cut inside its data: found when decoded
    (more / "m_cut.jpg").write_bytes((more / "m_cut.jpg").read_bytes()[:1500])
    Image.fromarray(np.full((8, 8, 3), 30, dtype=np.uint8)).save(more / "lane.png")
    Image.fromarray(np.full((8, 16, 3), 60, dtype=np.uint8)).save(more / "zone.png")
    with pytest.raises(UserError, match=r"m_cut\.jpg: .*or set skip_bad_files=true"):
        train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={more}", *TINY)
    assert not list((run / "out" / "predict").glob("lane*"))
    written = []
    png = Recorder.png
    monkeypatch.setattr(Recorder, "png", lambda self, file, image: written.append(file) or png(self, file, image))
    train(ERFNET, exps, "exp_name=run", "mode=predict", f"predict_input={more}", "skip_bad_files=true", *TINY)
    assert written == [f"predict/{n}_{kind}.png" for n in ("lane", "zone") for kind in ("mask", "overlay")]
    log = (run / "logs" / "run.log").read_text()
    assert log.count("skipped") == 1 and "m_cut.jpg" in log
    assert "predict: 2 image(s)" in log.splitlines()[-1]

    weights = load(run / "checkpoints" / "last.pth")["models"]["model"]
    agent = ERFNetAgent(
        config(
            f"experiments_dir={exps}",
            "exp_name=fine",
            *TINY,
            "num_classes=6",
            f"encoder_checkpoint={run / 'checkpoints' / 'last.pth'}",
        )
    )
    mine = agent.model.state_dict()
    agent.finalize()
    encoder = [k for k in weights if k.startswith("encoder.") and "output_conv" not in k]
    assert encoder and all(torch.equal(mine[k], weights[k]) for k in encoder)
    assert mine["encoder.output_conv.weight"].shape[0] == 6  # another class count: the classifier starts afresh
    other = tmp_path / "other.pth"
    torch.save({"models": {"model": {"fc.weight": torch.zeros(1)}}, "epoch": 1}, other)
    with pytest.raises(UserError, match="holds no ERFNet encoder"):
        train(ERFNET, exps, "exp_name=fine2", *TINY, f"encoder_checkpoint={other}")
    weights["encoder.layers.0.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save({"models": {"model": weights}, "epoch": 1}, other)
    with pytest.raises(UserError, match=r"other.pth: its encoder does not match ERFNet's \(size mismatch for layers"):
        train(ERFNET, exps, "exp_name=fine2", *TINY, f"encoder_checkpoint={other}")


def test_the_encoder_checkpoint_gives_its_average_on_a_fresh_start_only(tmp_path, exps, monkeypatch):
    """Taken from the repository (like every path key), the EMA's weights where the run kept one, and loaded only
    when training starts from nothing: a resume, mode=test and mode=predict have their own checkpoint."""
    train(ERFNET, exps, "exp_name=src", "max_epoch=1", "max_train_batches=2", "ema_decay=0.5", *TINY)
    source = load(exps / "src" / "checkpoints" / "last.pth")
    inside = REPO / "experiments" / f"_encoder_test_{os.getpid()}.pth"
    inside.parent.mkdir(exist_ok=True)
    shutil.copy(exps / "src" / "checkpoints" / "last.pth", inside)
    monkeypatch.chdir(tmp_path)  # a relative path is the repository's, not the current folder's
    try:
        args = ["exp_name=fine", *TINY, f"encoder_checkpoint={inside.relative_to(REPO)}", "max_train_batches=1"]
        agent = ERFNetAgent(config(f"experiments_dir={exps}", *args))
        mine, averaged = agent.unwrap(agent.model).state_dict(), source["callbacks"]["ema"]["model"]["module"]
        agent.finalize()
        encoder = [k for k in averaged if k.startswith("encoder.") and "output_conv" not in k]
        assert all(torch.equal(mine[k], averaged[k]) for k in encoder)
        assert not all(torch.equal(mine[k], source["models"]["model"][k]) for k in encoder)
        train(ERFNET, exps, *args, "max_epoch=1")
    finally:
        inside.unlink()
    train(ERFNET, exps, *args, "max_epoch=2")  # the file is gone: a resume does not read it
    train(ERFNET, exps, *args, "mode=test")
    assert load(exps / "fine" / "checkpoints" / "last.pth")["epoch"] == 2


def test_auto_class_weights_in_download_mode_over_a_present_tree(tmp_path, exps):
    """Computed by rank 0 alone (distributed.on_main), with no collective inside (one raises, in one process too)."""
    counts = voc_tree(tmp_path)["counts"]
    args = [*TINY, "num_classes=21", "data_mode=download", f"data_root={tmp_path}", "class_weights=auto"]
    agent = ERFNetAgent(config(f"experiments_dir={exps}", "exp_name=w", *args))
    weights = agent.loss.weight.cpu()
    agent.finalize()
    assert torch.allclose(weights, torch.tensor(voc.weights_from_counts(torch.from_numpy(counts))))
