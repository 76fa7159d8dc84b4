"""The model catalogue as the web side sees it, and the one way to activate a model."""
