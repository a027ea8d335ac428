"""Built-in datasets, registered by name: ``medmodal datasets list``."""

from medmodal.datasets import covid_cxr, heart_sounds, medmnist, mitdb, ptbxl, tables  # noqa: F401  (registers)
from medmodal.datasets import probe  # noqa: F401  (registers the synthetic fusion probe)
from medmodal.datasets import paired  # noqa: F401  (registers wdbc_breastmnist_mechanics)
from medmodal.datasets.base import DATASETS, Prepared, get_dataset, resolve_data_dir

__all__ = ["DATASETS", "Prepared", "get_dataset", "resolve_data_dir"]
