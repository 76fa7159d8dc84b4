"""DICOM networking: the Storage SCP listener, C-STORE ingest, de-identification, PACS sends."""
