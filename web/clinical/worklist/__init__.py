"""The worklist: the study's states and their transitions, claims, ordering and filters."""
