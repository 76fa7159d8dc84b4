"""Indexes that hold the worklist's order under a reader's sort (queries._order: the column,
then the triage order), for the sorts a column's few distinct values would otherwise leave to a
sort of most of the studies. A column of many values (accession, arrival, ascending date) is
read on its own index with an incremental sort of the few rows sharing a value. Study.Meta
lists these; migration 0022_worklist_counts_conditions_sorts made them."""

from django.db.models import Index

_TRIAGE = ("priority", "-finding_urgency", "-finding_probability", "created_at", "id")

WORKLIST_SORT_INDEXES = [
    Index(fields=["modality", *_TRIAGE], name="study_sort_modality_idx"),
    Index(fields=["body_part", *_TRIAGE], name="study_sort_region_idx"),
    # sort=-priority: the priority descending, then the rest of the triage order.
    Index(fields=["-priority", *_TRIAGE[1:]], name="study_sort_priority_desc_idx"),
]

# sort=-date: the latest study date first, studies without one last. SQLite takes no NULLS LAST
# in an index, so migration 0022 makes this one on PostgreSQL only, outside Study.Meta.
DATE_DESC_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS study_sort_date_desc_idx ON clinical_study (study_date DESC NULLS LAST, id)"
)
