"""The masked-image models of medmodal's image encoders, which their registrations declare as
their :class:`~medmodal.models.encoders.base.MaskedPath` (:mod:`medmodal.pretrain` trains them).

* ``vit.py``    SimMIM: mask token on the ViT's patch embeddings, linear + pixel-shuffle decoder
* ``swin.py``   SimMIM: mask token on the Swin's patch embeddings, last stage -> 1x1 conv + shuffle
* ``conv.py``   SparK-style (ResNets): hidden regions empty at every stage, light U-Net decoder
* ``pixels.py`` masks and patches as pixels
"""

__all__ = ["conv", "pixels", "swin", "vit"]
