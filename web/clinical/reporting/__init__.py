"""Reports: their lifecycle and ownership, report templates, the PDF, and the AI results as
DICOM SR and SC."""
