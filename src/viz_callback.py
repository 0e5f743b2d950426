"""A Lightning callback that logs StructSA's figures of one fixed validation clip to TensorBoard.

Every `every_n_epochs` validation epochs it draws the figures of `src.visualize` (correlation maps,
structural attention, context aggregators, the dynamic kernel and, optionally, the D = 0 comparison) for
the same clip, so a user watches structure emerge during training under the TensorBoard "Images" tab.
The clip is the first video of the first validation batch (val loaders are not shuffled, so it stays the
same clip), or a video file given by `clip_path`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from src.callbacks import run_protocol
from src.data.transforms import denormalize
from src.visualize import compute_structure_maps, load_clip, make_figures, vanilla_twin

log = logging.getLogger(__name__)


class StructureVisualizer(pl.Callback):
    """Log the structure figures of one fixed clip to every TensorBoard logger of the Trainer.

    Args:
        every_n_epochs: draw after every n-th validation epoch (the sanity check is skipped).
        stage, block, head: the attention layer and head to show (stage 3 or 4; negative blocks count
            from the end).
        query: "t,y,x" on the layer's token grid; None is the centre of the middle token frame.
        clip_path: a video to show instead of the first validation clip, made by the run's evaluation
            protocol (sampling, mean / std) with `num_frames` frames at `crop_size` (both required with it).
        compare_vanilla: also draw the attention of a D = 0 twin with the same weights.
        tag: TensorBoard tag prefix; figures appear as `<tag>/<figure name>`.
        backbone_attr: attribute of the LightningModule that holds the backbone.
        dpi: resolution of the logged images.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        stage: int = 3,
        block: int = -1,
        head: int = 0,
        query: str | None = None,
        clip_path: str | None = None,
        num_frames: int | None = None,
        crop_size: int | None = None,
        compare_vanilla: bool = True,
        tag: str = "structure",
        backbone_attr: str = "backbone",
        dpi: int = 80,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"StructureVisualizer: every_n_epochs={every_n_epochs} must be >= 1")
        if clip_path is not None and (num_frames is None or crop_size is None):
            raise ValueError(
                f"StructureVisualizer: clip_path={clip_path!r} needs num_frames and crop_size (the model's input)"
            )
        self.every_n_epochs = every_n_epochs
        self.stage, self.block, self.head, self.query = stage, block, head, query
        self.clip_path = clip_path
        self.num_frames, self.crop_size = num_frames, crop_size
        self.compare_vanilla = compare_vanilla
        self.tag = tag
        self.backbone_attr = backbone_attr
        self.dpi = dpi
        self._video: Tensor | None = None  # (1, 3, T, H, W), normalised as the model sees it
        self._frames: Tensor | None = None  # (T, H, W, 3) in [0, 1] for display
        self.logged_steps: list[int] = []

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Remember the first clip of the first validation batch (once, on CPU)."""
        if self._video is not None or self.clip_path is not None or batch_idx != 0:
            return
        video = batch["video"] if isinstance(batch, dict) else batch[0]
        clip = video[0]
        if clip.ndim == 5:  # (V, 3, T, H, W): all test views of a video; the first one is shown
            clip = clip[0]
        if clip.ndim != 4 or clip.shape[0] != 3:
            raise ValueError(
                f"StructureVisualizer: validation batch 'video' has shape {tuple(video.shape)}; expected "
                "(B, 3, T, H, W) or (B, V, 3, T, H, W)"
            )
        self._video = clip.detach().float().cpu().unsqueeze(0)
        protocol = run_protocol(trainer, pl_module)  # the batch was normalised with the run's mean / std
        self._frames = denormalize(self._video[0], protocol.mean, protocol.std).permute(1, 2, 3, 0)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw and log the figures every `every_n_epochs` epochs, on the global-zero process only."""
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            log.warning("StructureVisualizer: no TensorBoardLogger on the Trainer; nothing is logged")
            return
        if self.clip_path is not None and self._video is None:
            protocol = replace(
                run_protocol(trainer, pl_module), num_frames=self.num_frames, crop_size=self.crop_size
            )
            self._frames, self._video = load_clip(Path(self.clip_path), protocol)
        if self._video is None:
            log.warning("StructureVisualizer: no validation clip was seen; nothing is logged")
            return
        backbone = getattr(pl_module, self.backbone_attr)
        param = next(backbone.parameters())
        # Lightning runs validation hooks under inference_mode; the maps need ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            twin = vanilla_twin(backbone) if self.compare_vanilla else None
            maps = compute_structure_maps(
                backbone,
                self._video.to(param.device, param.dtype),
                stage=self.stage,
                block=self.block,
                head=self.head,
                query=self.query,
                vanilla_model=twin,
                frames=self._frames,
                class_names=getattr(pl_module, "class_names", None),
            )
            del twin
        figures = make_figures(maps)
        for fig in figures.values():
            fig.set_dpi(self.dpi)
        for logger in loggers:
            for name, fig in figures.items():
                logger.experiment.add_figure(
                    f"{self.tag}/{name}", fig, global_step=trainer.global_step, close=False
                )
            logger.experiment.flush()
        for fig in figures.values():
            plt.close(fig)
        self.logged_steps.append(trainer.global_step)
