"""The course website: Jupyter Book 1 over the stored notebooks (``python -m website``)."""
