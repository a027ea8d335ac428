"""Masked-image pretraining of image encoders: SimMIM (Xie et al., CVPR 2022) for the ViT and the
Swin transformer, a SparK-style masked-convolution path (Tian et al., ICLR 2023) for the ResNets;
2D and 3D.

* ``masks.py``      MaskGenerator: seeded, aligned mask patches at a ratio
* ``vit.py``        mask token on the ViT's patch embeddings, linear + pixel-shuffle decoder
* ``swin.py``       mask token on the Swin's patch embeddings, last stage -> 1x1 conv + pixel shuffle
* ``conv.py``       ResNet: hidden regions empty at every stage (sparse batch norm), U-Net decoder
* ``loss.py``       L1 on hidden pixels only
* ``model.py``      which encoders have a path; building one with its mask generator
* ``config.py``     PretrainConfig (strict; mask, encoder, train, preview, data sources)
* ``data.py``       images only, through the run's readers and processors; train split only
* ``loop.py``       AdamW, warm-up + cosine, seeded, resumable, progress with images/s
* ``artifacts.py``  encoder checkpoint, reconstruction grids, loss curve
* ``run.py``        :func:`pretrain`: one run, config to checkpoint
"""

from medmodal.pretrain.config import PretrainConfig, load_pretrain_config
from medmodal.pretrain.loss import masked_l1
from medmodal.pretrain.masks import MaskGenerator
from medmodal.pretrain.model import PATHS, build_simmim
from medmodal.pretrain.run import PretrainResult, pretrain

__all__ = [
    "PATHS",
    "MaskGenerator",
    "PretrainConfig",
    "PretrainResult",
    "build_simmim",
    "load_pretrain_config",
    "masked_l1",
    "pretrain",
]
