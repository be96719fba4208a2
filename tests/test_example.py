"""Template agent's tests: it learns its random images, trains on class folders, evaluates the test split."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import CONFIGS, load, train
from utils.errors import UserError

CONFIG = CONFIGS / "example_exp_0.json"


def test_learns_its_random_images(exps):
    """The config as shipped, for 3 of its epochs, must show learning (4 classes: chance is 0.25)."""
    train(CONFIG, exps, "exp_name=random", "max_epoch=3")
    summary = json.loads((exps / "random" / "summary.json").read_text())
    assert summary["final"]["valid/accuracy"] >= 0.8, summary


def write_class_folders(data: Path, classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 4) -> None:
    """Tiny PNGs in data/example/<split>/<class>/, class k bright in colour channel k."""
    for split in ("train", "valid", "test"):
        for k, name in enumerate(classes):
            folder = data / "example" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 60, (12, 12, 3), dtype=torch.uint8)
                pixels[..., k] += 180
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


def test_trains_on_class_folders_then_evaluates_the_test_split(exps, tmp_path):
    write_class_folders(tmp_path / "data")
    args = [f"data_root={tmp_path / 'data'}", "data_mode=folder", "num_classes=3", "exp_name=folders", "max_epoch=2"]
    train(CONFIG, exps, *args)
    assert load(exps / "folders" / "checkpoints" / "best.pth")["epoch"] >= 1
    train(CONFIG, exps, *args, "mode=test")
    summary = json.loads((exps / "folders" / "summary.json").read_text())
    assert 0 <= summary["test/accuracy"] <= 1 and summary["tested_checkpoint"].endswith("best.pth")
    assert summary["test/loss"] > 0 and summary["tested_after_epoch"] == 2
    train(CONFIG, exps, *args[:-1], "max_epoch=3")  # training on keeps the results of the test, dated
    again = json.loads((exps / "folders" / "summary.json").read_text())
    assert again["epochs"] == 3 and {k: again[k] for k in summary if "test" in k} == {
        k: v for k, v in summary.items() if "test" in k
    }
    shutil.rmtree(exps / "folders" / "checkpoints")  # a new run in the folder: the old model's results go
    train(CONFIG, exps, *args[:-1], "max_epoch=1", "resume=false")
    assert not [k for k in json.loads((exps / "folders" / "summary.json").read_text()) if "test" in k]


def test_renamed_class_folders_are_refused_in_test_and_on_resume(exps, tmp_path):
    """A label is a class folder's place among the names: renamed folders would swap them silently."""
    write_class_folders(tmp_path / "data", classes=("birch", "maple", "oak"))
    args = [f"data_root={tmp_path / 'data'}", "data_mode=folder", "exp_name=trees", "image_size=12"]
    train(CONFIG, exps, *args, "max_epoch=1")
    for split in ("train", "valid", "test"):
        folder = tmp_path / "data" / "example" / split
        (folder / "oak").rename(folder / "alder")
    for more in (["mode=test"], ["max_epoch=2"]):
        with pytest.raises(UserError, match="learnt the classes birch, maple, oak, but the data's class folders are "):
            train(CONFIG, exps, *args, *more)
    assert json.loads((exps / "trees" / "class_names.json").read_text())["class_names"] == ["birch", "maple", "oak"]
    assert json.loads((exps / "trees" / "config.json").read_text())["max_epoch"] == 1  # refused before it is written
    assert not (exps / "trees" / "config.1.json").exists()
    assert load(exps / "trees" / "checkpoints" / "last.pth")["epoch"] == 1
    # Another run (resume=false in a new folder, or a fine-tune from this one's weights) may learn other classes.
    path = exps / "trees" / "checkpoints" / "last.pth"
    train(CONFIG, exps, *args, "exp_name=alders", "max_epoch=2", f"resume={path}")
    assert json.loads((exps / "alders" / "class_names.json").read_text())["class_names"] == ["alder", "birch", "maple"]


def test_one_folder_of_class_folders_is_enough(exps, tmp_path):
    """train/ alone: valid_fraction of it validates, num_classes is the folders' count, their names are kept."""
    write_class_folders(tmp_path / "data", classes=("cat", "dog"), per_class=10)
    for split in ("valid", "test"):
        shutil.rmtree(tmp_path / "data" / "example" / split)
    train(CONFIG, exps, f"data_root={tmp_path / 'data'}", "data_mode=folder", "exp_name=one", "max_epoch=1")
    run = exps / "one"
    assert json.loads((run / "class_names.json").read_text()) == {"class_names": ["cat", "dog"]}
    assert load(run / "checkpoints" / "last.pth")["models"]["model"]["classifier.weight"].shape[0] == 2
    assert "train 16 samples, valid 4 samples" in (run / "logs" / "run.log").read_text()
    with pytest.raises(UserError, match=r"mode=test evaluates the test split: put its images in .*/test/<class>/"):
        train(CONFIG, exps, f"data_root={tmp_path / 'data'}", "data_mode=folder", "exp_name=one", "mode=test")


def test_exports_and_predicts_the_class_folders_it_trained_on(exps, tmp_path):
    """mode=export: verified ONNX and torch.export files naming the classes; mode=predict: a CSV row per image,
    images of any size and colour mode read as the folder mode reads its own."""
    write_class_folders(tmp_path / "data")
    args = [f"data_root={tmp_path / 'data'}", "data_mode=folder", "num_classes=3", "exp_name=f", "image_size=12"]
    train(CONFIG, exps, *args, "max_epoch=1")
    train(CONFIG, exps, *args, "mode=export")
    info = json.loads((exps / "f" / "export" / "export.json").read_text())
    assert info["class_names"] == ["a", "b", "c"] and info["input"]["shape"] == ["batch", 3, 12, 12]
    assert max(info["verified"]["max_abs_diff"].values()) <= 1e-4
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("L", (30, 17), 90).save(photos / "grey.png")
    Image.new("RGBA", (9, 40), (200, 10, 10, 128)).save(photos / "clear.png")
    Image.new("P", (12, 12)).save(photos / "palette.gif")
    train(CONFIG, exps, *args, "mode=predict", f"predict_input={photos}")
    with open(exps / "f" / "out" / "predict" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["file"]).name for r in rows] == ["clear.png", "grey.png", "palette.gif"]
    for row in rows:
        top = [pair.split(":") for pair in row["top5"].split()]
        assert row["class"] == top[0][0] and row["probability"] == top[0][1] and len(top) == 3
        assert {name for name, _ in top} == {"a", "b", "c"} and abs(sum(float(p) for _, p in top) - 1) < 1e-4
    # A photo cut short: one line naming it; with skip_bad_files=true, left out (no row), as training does.
    Image.new("RGB", (64, 48), (10, 200, 10)).save(photos / "cut.jpg", quality=95)
    (photos / "cut.jpg").write_bytes((photos / "cut.jpg").read_bytes()[:400])
    (exps / "f" / "out" / "predict" / "predictions.csv").unlink()
    with pytest.raises(UserError, match=r"cut\.jpg: not a readable image"):
        train(CONFIG, exps, *args, "mode=predict", f"predict_input={photos}")
    train(CONFIG, exps, *args, "mode=predict", f"predict_input={photos}", "skip_bad_files=true")
    with open(exps / "f" / "out" / "predict" / "predictions.csv", newline="") as f:
        assert [Path(r["file"]).name for r in csv.DictReader(f)] == ["clear.png", "grey.png", "palette.gif"]
    (photos / "cut.jpg").unlink()
    # The run's own class names (class_names.json), also when the data at hand has none (random images).
    (exps / "f" / "out" / "predict" / "predictions.csv").unlink()
    train(CONFIG, exps, "data_mode=random", "num_classes=3", "exp_name=f", "image_size=12", "mode=predict",
          f"predict_input={photos}")  # fmt: skip
    with open(exps / "f" / "out" / "predict" / "predictions.csv", newline="") as f:
        assert {row["class"] for row in csv.DictReader(f)} <= {"a", "b", "c"}


def test_predict_checks_its_input_before_its_earlier_output(exps, tmp_path):
    """The input's mistake is the one to fix first: told before the csv of an earlier mode=predict is refused."""
    earlier = exps / "p" / "out" / "predict" / "predictions.csv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("file,class,probability,top5\n")
    args = ["data_mode=random", "exp_name=p", "mode=predict"]
    with pytest.raises(UserError, match=r"'predict_input': \S*nonexistent is neither a file nor a folder"):
        train(CONFIG, exps, *args, f"predict_input={tmp_path / 'nonexistent'}")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match=r"notes\.png: not an image"):
        train(CONFIG, exps, *args, f"predict_input={tmp_path / 'notes.png'}")
    assert earlier.read_text() == "file,class,probability,top5\n"


def test_one_class_folder_is_refused_in_one_line(exps, tmp_path):
    write_class_folders(tmp_path / "data", classes=("a",))
    with pytest.raises(UserError, match=r"train: one class folder \(a/\); a classifier needs two or more"):
        train(CONFIG, exps, f"data_root={tmp_path / 'data'}", "data_mode=folder", "max_epoch=1")
    assert not list(exps.iterdir())  # found while the agent is built: a new run leaves no folder behind


def test_a_run_that_goes_on_and_fails_while_built_says_why_in_its_log(exps, tmp_path):
    write_class_folders(tmp_path / "data")
    args = [f"data_root={tmp_path / 'data'}", "data_mode=folder", "exp_name=on", "image_size=12"]
    train(CONFIG, exps, *args, "max_epoch=1")
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(UserError, match="image folder not found"):
        train(CONFIG, exps, *args, "max_epoch=2")
    last = (exps / "on" / "logs" / "run.log").read_text().splitlines()[-1]
    assert "failed: " in last and "image folder not found" in last, last
