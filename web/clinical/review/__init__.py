"""Radiologists' annotations and verdicts on images and AI results."""
