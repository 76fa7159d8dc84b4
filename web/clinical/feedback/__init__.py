"""Feedback for retraining: the radiologists' verdicts and "AI missed" records as labelled,
de-identified images in the layout the training commands read."""
