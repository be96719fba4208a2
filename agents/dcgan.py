"""DCGAN (Radford, Metz, Chintala, ICLR 2016) on CelebA: two networks, two optimizers, BaseAgent's loop.

What differs from the supervised loop, and nothing else:
- ``train_step``: a discriminator step (real images vs detached fakes, BCE-with-logits), then a
  generator step with the non-saturating loss (the fakes labelled real);
- ``validate``: the sliced Wasserstein distance (``utils/examples/swd.py``) between the held-out images and
  as many generated ones; ``monitor: "min valid/swd"`` keeps the best generator in best.pth;
- after every epoch the fixed noise batch is rendered to ``out/samples_epoch_NNN.png`` (an 8x8 grid,
  also in TensorBoard) and ``out/progress.gif`` is rebuilt from all grids so far;
- ``mode=predict`` writes ``num_samples`` generated images to ``out/predict/``; ``mode=export`` the generator.
Both networks, both optimizers and the fixed noise are checkpointed by BaseAgent (the noise through
``extra_state``), so a resume is exact and the grids of a resumed run show the same faces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from itertools import islice

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from agents.base import BaseAgent
from datasets.celeba import CelebADataLoader
from graphs.models.dcgan_discriminator import DCGANDiscriminator
from graphs.models.dcgan_generator import DCGANGenerator
from utils.config import Key, torch_object_key
from utils.errors import UserError
from utils.examples.swd import resolutions, swd
from utils.run.export import ExportInput
from utils.training import distributed
from utils.training.seeding import derive_seed

# The paper's Adam: lr 2e-4, beta1 0.5 (0.9 oscillated and was unstable in their runs).
ADAM = {"type": "Adam", "args": {"lr": 0.0002, "betas": [0.5, 0.999]}}
GRID = 64  # fixed-noise samples rendered after every epoch: an 8x8 grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 images 0..255 (how they are saved, and what SWD compares)."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


_UNUSED = ("optimizer", "scheduler", "scheduler_interval", "accumulate_grad_batches")


class DCGANAgent(BaseAgent):
    config_schema = {
        # One optimizer per network instead of the common "optimizer"; DCGAN keeps its learning rate constant.
        # No gradient accumulation: the generator's loss flows back through the discriminator, whose
        # gradients would then pile up across batches between its own steps.
        **{k: v for k, v in BaseAgent.config_schema.items() if k not in _UNUSED},
        **CelebADataLoader.config_schema,
        "nz": Key(100, int, "length of the generator's noise vector", min=1, max=4096),
        "ngf": Key(64, int, "generator width: channels of its last hidden layer", min=1, max=1024),
        "ndf": Key(64, int, "discriminator width: channels of its first layer", min=1, max=1024),
        "optimizer_g": torch_object_key("torch.optim", "optimizer", ADAM, "the generator's optimizer"),
        "optimizer_d": torch_object_key("torch.optim", "optimizer", ADAM, "the discriminator's optimizer"),
        "monitor": dataclasses.replace(BaseAgent.config_schema["monitor"], default="min valid/swd"),
        "num_samples": Key(64, int, "mode=predict: how many generated images to write to out/predict/", min=1),
    }

    def __init__(self, config) -> None:
        super().__init__(config)
        generator = DCGANGenerator(config.nz, config.ngf, config.channels, config.image_size)
        discriminator = DCGANDiscriminator(config.ndf, config.channels, config.image_size)
        self.netG = self.prepare_model(generator, name="generator")
        self.netD = self.prepare_model(discriminator, name="discriminator", average=False)  # EMA: of G only
        self.optG = self.make_optimizer(self.netG.parameters(), name="generator", key="optimizer_g")
        self.optD = self.make_optimizer(self.netD.parameters(), name="discriminator", key="optimizer_d")
        if config.mode not in ("predict", "export"):  # generating needs only the checkpoint
            self.data_loader = CelebADataLoader(config)
        g = torch.Generator().manual_seed(derive_seed(config.seed, "dcgan", "fixed noise"))
        self.fixed_noise = torch.randn(GRID, config.nz, generator=g)

    # ----- training -------------------------------------------------------------------------------

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        real = self.to_device(batch[0]).float().div_(127.5).sub_(1)  # uint8 -> [-1, 1], the generator's range
        n = len(real)
        ones, zeros = real.new_ones(n), real.new_zeros(n)
        noise = torch.randn(n, self.config.nz, device=self.device)
        with self.autocast():
            fake = self.netG(noise)
            # Real and fake in separate batches, as in the paper: each gets its own batch-norm statistics.
            d_real, d_fake = self.netD(real).float(), self.netD(fake.detach()).float()
            loss_d = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
                d_fake, zeros
            )
        self.optimize(loss_d, self.optD)
        with self.autocast():
            # Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z))).
            loss_g = F.binary_cross_entropy_with_logits(self.netD(fake).float(), ones)
        self.optimize(loss_g, self.optG)
        return {
            "loss": (loss_d + loss_g).detach(),  # checked for NaN: either network diverging stops the run
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(d_real).mean().detach(),  # D(x)
            "d_fake": torch.sigmoid(d_fake).mean().detach(),  # D(G(z)), before the discriminator's step
        }

    def train_one_epoch(self) -> None:
        super().train_one_epoch()
        self.record_samples(self.epoch + 1)

    def record_samples(self, epoch: int) -> None:
        """The fixed noise as an 8x8 grid: out/samples_epoch_NNN.png, TensorBoard, and out/progress.gif."""
        if not distributed.is_main():
            return
        with distributed.main_only(), self.averaged():  # the EMA generator, when the run keeps one
            grid = make_grid(self.render(self.fixed_noise), nrow=8, padding=2)
        self.recorder.image("samples", grid, self.global_step, file=f"samples_epoch_{epoch:03d}.png")
        self.recorder.gif("progress.gif", [f"samples_epoch_{e:03d}.png" for e in range(1, epoch + 1)])

    # ----- generating -----------------------------------------------------------------------------

    @torch.no_grad()
    def render(self, noise: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, S, S) from the generator in eval mode (batch norm's running statistics)."""
        generator = self.unwrap(self.netG)
        generator.eval()
        with self.autocast():
            return to_uint8(generator(noise.to(self.device))).cpu()

    def generate(self, n: int, seed: int) -> Iterator[torch.Tensor]:
        """``n`` uint8 images in batches of batch_size, from noise drawn by a generator seeded with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        for start in range(0, n, self.config.batch_size):
            yield self.render(torch.randn(min(self.config.batch_size, n - start), self.config.nz, generator=g))

    # ----- validation: the sliced Wasserstein distance ------------------------------------------

    def metric_names(self) -> list[str]:
        return ["valid/swd", *(f"valid/swd_{size}" for size in resolutions(self.config.image_size))]

    def validate(self, loader=None, split: str = "valid", limit: int | None | str = "config") -> dict[str, float]:
        """SWD between the held-out images (all ranks' shards) and as many generated ones, computed on rank 0.

        The noise, patch positions and directions come from generators seeded by the run's seed, so every
        validation of a run compares against the same draws and its value does not depend on the process count.
        """
        loader = loader if loader is not None else self.data_loader.valid_loader
        c, size = self.config.channels, self.config.image_size
        limit = self.config.max_valid_batches if limit == "config" else limit
        reals = [batch[0] for batch in islice(loader, limit)]
        shard = torch.cat(reals) if reals else torch.empty(0, c, size, size, dtype=torch.uint8)
        shards = distributed.gather_to_main(shard)

        def distances() -> list[float]:
            # Back in the held-out set's order (rank r holds samples r, r + W, ... of W ranks: ShardedSampler),
            # so that each image meets the same patch positions whatever the number of processes.
            real = torch.empty((sum(len(s) for s in shards), c, size, size), dtype=torch.uint8)
            for r, s in enumerate(shards):
                real[r :: len(shards)] = s
            real = real.to(self.device)
            fake = torch.cat(list(self.generate(len(real), derive_seed(self.config.seed, "dcgan", "swd noise"))))
            draws = torch.Generator().manual_seed(derive_seed(self.config.seed, "dcgan", "swd"))
            per_level = swd(real, fake.to(self.device), draws)
            return [sum(per_level.values()) / len(per_level), *per_level.values()]

        names = [f"{split}/swd", *(f"{split}/swd_{s}" for s in resolutions(size))]
        return dict(zip(names, distributed.on_main(distances), strict=True))

    # ----- predict, checkpoint extras, summary ----------------------------------------------------

    def predict(self) -> None:
        """mode=predict: ``num_samples`` images from best.pth (or ``resume``) as PNG files in out/predict/."""
        path = self.load_test_checkpoint()
        out = self.run_dir / "out" / "predict"

        def refuse_earlier() -> None:  # rank 0 looks, before any rank writes: no rank sees another's files
            earlier = sorted(out.iterdir()) if out.is_dir() else []
            if earlier:
                raise UserError(
                    f"{out}: holds {len(earlier)} files of an earlier mode=predict; move or delete them first "
                    "(nothing is overwritten)"
                )

        distributed.on_main(refuse_earlier)
        n = self.config.num_samples
        width = max(5, len(str(n - 1)))
        index = 0
        for batch in self.generate(n, derive_seed(self.config.seed, "dcgan", "predict")):
            for image in batch:
                self.recorder.png(f"predict/{index:0{width}d}.png", image)
                index += 1
        self.recorder.info(f"predict: {n} images generated by {path} written to {out}")

    def export_input(self) -> ExportInput:
        """mode=export: the generator, standard normal noise (B, nz) -> images in [-1, 1] (B, channels, S, S)."""
        g = torch.Generator().manual_seed(derive_seed(self.config.seed, "dcgan", "export"))
        c, size = self.config.channels, self.config.image_size
        preprocessing = {
            "input": f"noise of a standard normal distribution, (batch, {self.config.nz})",
            "output": f"images (batch, {c}, {size}, {size}) in [-1, 1]: pixel = round((x + 1) * 127.5)",
        }
        noise = torch.randn(5, self.config.nz, generator=g)
        return ExportInput(self.unwrap(self.netG), noise, "noise", "image", preprocessing=preprocessing)

    def extra_state(self) -> dict:
        return {"fixed_noise": self.fixed_noise}

    def load_extra_state(self, state: dict) -> None:
        if "fixed_noise" in state:
            self.fixed_noise = state["fixed_noise"]

    def summary_extra(self) -> dict:
        count = {name: sum(p.numel() for p in self.unwrap(m).parameters()) for name, m in self.models.items()}
        return {"num_params_generator": count["generator"], "num_params_discriminator": count["discriminator"]}
