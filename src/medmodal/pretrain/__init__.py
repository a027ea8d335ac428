"""Masked-image pretraining of image encoders: SimMIM (Xie et al., CVPR 2022) for the ViT and the
Swin transformer, a SparK-style masked-convolution path (Tian et al., ICLR 2023) for the ResNets;
2D and 3D. Each encoder declares its path where it is registered (``EncoderCapabilities.
masked_path``; the masked-image models are in :mod:`medmodal.models.encoders.masked`).

* ``masks.py``      MaskGenerator: seeded, aligned mask patches at a ratio
* ``loss.py``       L1 on hidden pixels only
* ``model.py``      which encoders have a path (asked of the registry); building one with its masks
* ``config.py``     PretrainConfig (strict; mask, encoder, train, preview, data sources)
* ``data.py``       images only, through the run's readers and processors; train split only
* ``loop.py``       AdamW, warm-up + cosine, seeded, resumable, progress with images/s
* ``artifacts.py``  encoder checkpoint, reconstruction grids, loss curve
* ``run.py``        :func:`pretrain`: one run, config to checkpoint
"""

from medmodal.pretrain.config import PretrainConfig, load_pretrain_config
from medmodal.pretrain.loss import masked_l1
from medmodal.pretrain.masks import MaskGenerator
from medmodal.pretrain.model import build_simmim, masked_paths
from medmodal.pretrain.run import PretrainResult, pretrain

__all__ = [
    "MaskGenerator",
    "PretrainConfig",
    "PretrainResult",
    "build_simmim",
    "load_pretrain_config",
    "masked_l1",
    "masked_paths",
    "pretrain",
]
