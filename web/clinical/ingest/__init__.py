"""Uploads from every route (browser, API, DICOM, batches): validation, identity and conflicts."""
