"""The modalities of a sample, in the order every part of the project uses (batches, model, folders)."""
MODALITIES = ("RGB", "NI", "TI")
