"""medmodal: multimodal medical deep learning toolkit.

``import medmodal`` imports nothing else (the subpackages are imported where they are used). The
layers, lowest first; a module imports only from its own layer or lower ones, and no import
cycle exists (``tests/test_imports.py`` checks both):

errors, options, utils < registry, config, checkpoint < survival, evaluate < data (paths, schema,
splits < readers < manifest, preprocess, cache < dataset) < datasets, audit, fusion, models
< predictor < train, export, whatif < run < explain, pretrain, tune < api, serve < cli.
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "api",
    "audit",
    "checkpoint",
    "cli",
    "config",
    "data",
    "datasets",
    "errors",
    "evaluate",
    "explain",
    "export",
    "fusion",
    "models",
    "options",
    "predictor",
    "pretrain",
    "registry",
    "run",
    "serve",
    "survival",
    "train",
    "tune",
    "utils",
    "whatif",
]
