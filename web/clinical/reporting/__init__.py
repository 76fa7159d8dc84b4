"""Reports: their lifecycle and ownership, the PDF, and the AI results as DICOM SR and SC."""
