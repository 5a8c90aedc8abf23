"""The model's errors that modules without torch raise too (fetching a checkpoint needs no torch)."""


class CheckpointError(RuntimeError):
    """A checkpoint folder does not match the model: names the folder and the offending tensors."""
