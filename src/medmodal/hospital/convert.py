"""Images (PNG X-rays, MedMNIST arrays) -> a DICOM study of Secondary Capture instances made
with highdicom, in a chosen transfer syntax (JPEG 2000 / JPEG-LS / RLE as hospitals store CR/DX).

For demos, tests and benchmarks: the patient fields are the caller's (made-up) values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medmodal.errors import ConfigError


@dataclass(frozen=True)
class StudyFields:
    """Who and what the study is (made-up values for tests and demos)."""

    patient_id: str = "MM-TEST-0001"
    patient_name: str = "Test^Patient"
    accession: str = "ACC0001"
    study_date: str = "20240101"
    description: str = "medmodal test study"
    modality: str = "CR"


def images_to_study(
    images: Sequence[np.ndarray],
    fields: StudyFields = StudyFields(),
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
) -> list[Dataset]:
    """One series of Secondary Capture instances (grey uint8 / uint16, or RGB uint8)."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for i, img in enumerate(images, 1):
        arr = np.asarray(img)
        if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3):
            raise ConfigError(
                f"image {i}: expected a 2D grey or RGB uint8/uint16 array, got {arr.dtype} {arr.shape}"
            )
        colour = arr.ndim == 3
        sc = hd.sc.SCImage(
            pixel_array=arr,
            photometric_interpretation="RGB" if colour else "MONOCHROME2",
            bits_allocated=8 * arr.dtype.itemsize,
            coordinate_system="PATIENT",
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            series_number=1,
            sop_instance_uid=generate_uid(),
            instance_number=i,
            manufacturer="medmodal test data",
            patient_id=fields.patient_id,
            patient_name=fields.patient_name,
            patient_sex="O",
            accession_number=fields.accession,
            study_id="1",
            study_date=fields.study_date,
            study_time="120000",
            patient_orientation=("L", "F"),
            transfer_syntax_uid=transfer_syntax,
        )
        sc.Modality = fields.modality
        sc.StudyDescription = fields.description
        out.append(sc)
    return out
