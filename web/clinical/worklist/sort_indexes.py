"""Indexes that hold the worklist's order under a reader's sort (queries._order: the column,
then the triage order), for the sorts a column's few distinct values would otherwise leave to a
sort of most of the studies, and for the sorts by the patient's fields (copied onto the study:
worklist.patients). A column of many values (accession, arrival, ascending date) is read on its
own index with an incremental sort of the few rows sharing a value. Study.Meta lists these;
migrations 0022_worklist_counts_conditions_sorts and 0023_study_patient_sorts made them."""

from django.db.models import Index

_TRIAGE = ("priority", "-finding_urgency", "-finding_probability", "created_at", "id")

WORKLIST_SORT_INDEXES = [
    Index(fields=["modality", *_TRIAGE], name="study_sort_modality_idx"),
    Index(fields=["body_part", *_TRIAGE], name="study_sort_region_idx"),
    # sort=-priority: the priority descending, then the rest of the triage order.
    Index(fields=["-priority", *_TRIAGE[1:]], name="study_sort_priority_desc_idx"),
    # sort=patient and sort=-patient: the patient's name either way, then the triage order.
    Index(fields=["patient_name", *_TRIAGE], name="study_sort_patient_idx"),
    Index(fields=["-patient_name", *_TRIAGE], name="study_sort_patient_desc_idx"),
    # sort=sex.
    Index(fields=["patient_sex", *_TRIAGE], name="study_sort_sex_idx"),
    # sort=-age: the earliest birth date first (an ascending index puts the unknown ones last).
    Index(fields=["patient_birth_date", *_TRIAGE], name="study_sort_birth_date_idx"),
]

# sort=-date: the latest study date first, studies without one last. SQLite takes no NULLS LAST
# in an index, so migration 0022 makes this one on PostgreSQL only, outside Study.Meta.
DATE_DESC_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS study_sort_date_desc_idx ON clinical_study (study_date DESC NULLS LAST, id)"
)

# sort=age: the latest birth date first (the youngest), unknown ones last, then the triage order.
# PostgreSQL only, as above (migration 0023).
AGE_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS study_sort_age_idx ON clinical_study (patient_birth_date DESC NULLS LAST, "
    "priority, finding_urgency DESC, finding_probability DESC, created_at, id)"
)
