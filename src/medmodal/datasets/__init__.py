"""Built-in datasets, registered by name: ``medmodal datasets list``."""

from medmodal.datasets import (  # noqa: F401  (registers)
    covid_cxr,
    heart_sounds,
    medmnist,
    mitdb,
    paired,  # noqa: F401  (registers wdbc_breastmnist_mechanics)
    probe,  # noqa: F401  (registers the synthetic fusion probe)
    ptbxl,
    tables,
)
from medmodal.datasets.base import (
    DATASETS,
    Prepared,
    get_dataset,
    prepare_dataset,
    resolve_data_dir,
)

__all__ = ["DATASETS", "Prepared", "get_dataset", "prepare_dataset", "resolve_data_dir"]
