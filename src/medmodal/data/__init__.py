"""The data layer: from a manifest row to model-ready tensors.

* :mod:`.paths` safe file references; :mod:`.schema` the schema; :mod:`.splits` patient-level
  splits; :mod:`.manifest` reading and checking a manifest, label encoding;
* :mod:`.readers` files -> arrays (image readers and signal formats in registries);
* :mod:`.preprocess` modality processors (read -> fit -> transform);
* :mod:`.dataset` MultimodalDataset and collate; :mod:`.cache` TensorCache and RawSpill.

Nothing is imported here: the readers import :mod:`.paths`, and ``import medmodal.data.paths``
must not pull in the image libraries.
"""

__all__ = ["cache", "dataset", "manifest", "paths", "preprocess", "readers", "schema", "splits"]
