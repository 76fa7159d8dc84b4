"""Hospital integration over DICOM: the Storage SCP's ingest (listener.py, ingest.py), the AI
results as DICOM (results_sc.py, results_sr.py), their C-STORE to a PACS (pacs_send.py) and the
de-identified research export (deidentify.py). pynetdicom/highdicom are imported here only."""
