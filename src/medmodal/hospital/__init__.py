"""The assistant in a hospital: PACS (DICOMweb, DIMSE), DICOM SR and FHIR R4.

* :mod:`.dicomweb` ``Pacs``: QIDO-RS search, WADO-RS fetch, STOW-RS store;
* :mod:`.study` a study's image instances -> de-identified -> one prediction each;
* :mod:`.sr` the predictions as a DICOM SR (highdicom TID 1500), read back, validated;
* :mod:`.pipeline` fetch -> de-identify -> predict -> SR -> store, timed, audited;
* :mod:`.listen` a DIMSE Storage SCP that predicts when a routed study is complete;
* :mod:`.fhir` a prediction as FHIR resources; :mod:`.fhir_input` a FHIR Bundle as inputs;
* :mod:`.convert` images -> a DICOM study (tests, demos); :mod:`.orthanc` a local Orthanc.

Nothing is imported here (highdicom, pynetdicom, dicomweb-client and fhir.resources are the
``hospital`` extra).
"""

__all__ = [
    "convert",
    "dicomweb",
    "fhir",
    "fhir_input",
    "listen",
    "orthanc",
    "pipeline",
    "sr",
    "study",
]
