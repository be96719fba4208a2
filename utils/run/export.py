"""mode=export: a trained network as ONNX and torch.export files, each verified before it is reported written.

An agent states what it exports with ``export_input()`` (BaseAgent's hook): the network, a batch of
real inputs (validation images, observations, noise) and what a user of the files must know (the
preprocessing, class names). ``export`` then writes under the run's ``export/``:

- ``model.pt2``: ``torch.export`` with a dynamic batch dimension (``torch.export.load`` reads it);
- ``model.onnx``: the same program through ``torch.onnx.export(..., dynamo=True)``, checked with
  ``onnx.checker``;
- ``export.json``: input and output names, shapes and dtypes, the preprocessing, class names, the
  checkpoint and its metrics, and the verification's max abs differences.

The program is traced on 2 inputs (a batch of 1 would make the batch dimension static). Both files
then run batches of 1 and 5 of the inputs, onnxruntime on its CPUExecutionProvider and the reloaded
.pt2, and must agree with PyTorch within ``TOLERANCE``: a mismatch is an error, and nothing is left
written. What torch.export or the ONNX exporter cannot handle is a UserError naming the network and
the operator. onnx and onnxruntime are imported here only (mode=export needs them, training does not).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError
from utils.run import checkpoint

TOLERANCE = 1e-4
BATCHES = (1, 5)  # batch sizes every export is verified at
MAX_SIZE = 65536  # the upper bound of each dynamic dimension
FILES = ("model.pt2", "model.onnx", "export.json")


@dataclass
class ExportInput:
    """What an agent exports: the network, real inputs for it, and what a user of the exported files must know.

    ``inputs``: a batch of inputs as the network gets them in validation (at least one; fewer than 5 are
    repeated). ``multiple_of``: dimensions besides the batch that stay dynamic, each a multiple of a number
    (ERFNet: ``{2: 8, 3: 8}``, any image size divisible by 8). ``preprocessing``: how raw data becomes
    ``inputs`` (mean, std, image size, channels...), written to export.json for the user of the files.
    """

    model: nn.Module
    inputs: torch.Tensor
    input_name: str = "input"
    output_name: str = "output"
    multiple_of: dict[int, int] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None


class ExportMismatch(RuntimeError):
    """An exported file computes other outputs than the PyTorch network (a bug of the exporter or of ours)."""


def first_inputs(loader, count: int = max(BATCHES)) -> torch.Tensor:
    """The inputs (first element of each batch) of ``loader``'s first ``count`` samples."""
    inputs, have = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        inputs.append(x)
        have += len(x)
        if have >= count:
            break
    if not inputs:
        raise UserError("config: key 'mode': mode=export needs validation inputs to verify the export; found none")
    return torch.cat(inputs)[:count]


def checkpoint_source(path: Path) -> dict[str, Any]:
    """Where exported weights come from: the checkpoint, its epoch and step, and the metrics of that epoch
    (its run's metrics.csv row), for export.json."""
    state = checkpoint.load(path)
    metrics_csv = Path(path).resolve().parent.parent / "metrics.csv"
    rows = list(csv.DictReader(io.StringIO(metrics_csv.read_text()))) if metrics_csv.exists() else []
    row = next((r for r in reversed(rows) if r.get("epoch") == str(state.get("epoch"))), {})
    return {
        "checkpoint": str(path),
        "epoch": state.get("epoch"),
        "global_step": state.get("global_step"),
        "metrics": {k: float(v) for k, v in row.items() if k not in ("epoch", "step") and v not in ("", None)},
    }


def export(spec: ExportInput, out_dir: Path, source: dict[str, Any]) -> dict[str, Any]:
    """Write and verify ``spec.model``'s model.pt2, model.onnx and export.json in ``out_dir``; returns export.json.

    ``source``: where the weights came from (checkpoint path, epoch, metrics), kept in export.json.
    """
    import onnx

    taken = [out_dir / f for f in FILES if (out_dir / f).exists()]
    if taken:
        raise UserError(
            f"{taken[0]}: written by an earlier mode=export; move or delete {out_dir} first (nothing is overwritten)"
        )
    name = type(spec.model).__name__
    model = copy.deepcopy(spec.model).cpu().float().eval()  # onnxruntime's CPU provider is the reference
    inputs = spec.inputs.detach().cpu().contiguous()
    inputs = inputs.repeat(-(-max(BATCHES) // len(inputs)), *[1] * (inputs.dim() - 1))[: max(BATCHES)]
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_SIZE)}
    for dim, step in spec.multiple_of.items():
        dims[dim] = step * torch.export.Dim(f"{spec.input_name}_{dim}", min=2, max=MAX_SIZE // step)
    example = (inputs[:2],)
    try:
        with torch.no_grad():
            program = torch.export.export(model, example, dynamic_shapes=(dims,), strict=False)
    except Exception as e:  # noqa: BLE001 (torch.export raises many types; each means: cannot trace this network)
        raise UserError(f"{name}: torch.export cannot export it: {_why(e)}") from None
    try:
        onnx_program = torch.onnx.export(
            program, example, dynamo=True, input_names=[spec.input_name], output_names=[spec.output_name], verbose=False
        )
    except Exception as e:  # noqa: BLE001 (the ONNX exporter's errors name the operator it has no translation for)
        raise UserError(f"{name}: cannot export to ONNX: {_why(e)}") from None

    work = out_dir.parent / f".{out_dir.name}.tmp"  # verified files only ever appear in out_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        torch.export.save(program, work / "model.pt2")
        onnx_program.save(str(work / "model.onnx"))
        onnx.checker.check_model(str(work / "model.onnx"), full_check=True)
        differences = verify(model, work, spec, inputs)
        with torch.no_grad():
            output = model(inputs[:2])
        info = {
            "network": name,
            "input": _tensor_info(spec.input_name, inputs[:2], spec.multiple_of),
            "output": _tensor_info(spec.output_name, output, spec.multiple_of, follows=inputs[:2]),
            "preprocessing": spec.preprocessing,
            "class_names": spec.class_names,
            **source,
            "verified": {
                "tolerance": TOLERANCE,
                "batch_sizes": list(BATCHES),
                "max_abs_diff": differences,
                "onnxruntime": _version("onnxruntime"),
                "torch": torch.__version__,
            },
        }
        (work / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in FILES:
            (work / file).replace(out_dir / file)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def verify(model: nn.Module, folder: Path, spec: ExportInput, inputs: torch.Tensor) -> dict[str, float]:
    """Max abs differences of onnxruntime and the reloaded .pt2 from PyTorch; ExportMismatch above TOLERANCE."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    reloaded = torch.export.load(folder / "model.pt2").module()
    cases = {f"batch {b}": inputs[:b] for b in BATCHES}
    for dim, step in spec.multiple_of.items():  # another size of each dynamic dimension, cut from real inputs
        size = inputs.shape[dim] - step
        if size > 0:
            cases[f"batch 1, dim {dim} of {size}"] = inputs[:1].narrow(dim, 0, size)
    differences = {}
    for case, x in cases.items():
        with torch.no_grad():
            expected = model(x)
            by_pt2 = reloaded(x)
        (by_onnx,) = session.run([spec.output_name], {spec.input_name: x.numpy()})
        for runtime, got in (("onnxruntime", torch.from_numpy(by_onnx)), ("pt2", by_pt2)):
            if got.shape != expected.shape:
                shapes = f"{tuple(got.shape)}, PyTorch's {tuple(expected.shape)}"
                raise ExportMismatch(f"{type(model).__name__}: {runtime}, {case}: output shape {shapes}")
            diff = float((got.float() - expected.float()).abs().max())
            differences[f"{runtime}, {case}"] = diff
            if not diff <= TOLERANCE:
                raise ExportMismatch(
                    f"{type(model).__name__}: {runtime} computes other outputs than PyTorch at {case}: "
                    f"max abs difference {diff:.3g} > {TOLERANCE}; nothing written"
                )
    return differences


def _tensor_info(
    name: str, tensor: torch.Tensor, multiple_of: dict[int, int], follows: torch.Tensor | None = None
) -> dict[str, Any]:
    """Name, shape (dynamic dimensions as strings) and dtype, as export.json lists them; ``follows``: the input,
    whose dynamic dimensions an output of the same size at the same place has too (a segmentation's H, W)."""
    shape: list[int | str] = list(tensor.shape)
    shape[0] = "batch"
    for dim, step in multiple_of.items():
        if follows is None:
            shape[dim] = f"multiple of {step}, from {2 * step}"
        elif tensor.dim() > dim and tensor.shape[dim] == follows.shape[dim]:
            shape[dim] = f"as the input's dimension {dim}"
    return {"name": name, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")}


def _why(error: Exception) -> str:
    """One line from an exporter's error: the operator it has no translation for, else the first line of the cause."""
    chain, e = [], error
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(e) for e in chain)
    operator = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if operator:
        return f"operator {operator[1]}.{operator[2]} has no ONNX translation"
    where = re.search(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text)
    first = next((line.strip() for line in str(chain[-1]).splitlines() if line.strip()), type(chain[-1]).__name__)
    return f"{first}" + (f" (at {Path(where[1]).name}:{where[2]}: {where[4].strip()})" if where else "")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def export_run(agent) -> None:
    """mode=export: the network of best.pth (or ``resume``) to the run's export/ folder, verified."""
    if agent.world_size > 1:
        raise UserError("config: key 'mode': mode=export runs in one process; run it without --nproc")
    path = agent.load_test_checkpoint()
    spec = agent.export_input()
    spec.class_names = spec.class_names or agent.class_names()
    info = export(spec, agent.run_dir / "export", checkpoint_source(path))
    agent.recorder.info(f"export: {info['network']} of {path} to {agent.run_dir / 'export'}, verified")
