"""medmodal: multimodal medical deep learning toolkit."""

__version__ = "0.1.0"
