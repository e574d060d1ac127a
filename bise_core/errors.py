"""Errors that are the user's to fix.

Everything the engine rejects because of its *inputs* (a file, a URI, a hyperparameter)
raises a subclass of :class:`BiseInputError`, so that the CLI can print one clear line
and exit non-zero, and the service can turn it into a problem+json body naming ``param``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BiseInputError(ValueError):
    """Bad input. ``param`` names the field at fault (e.g. ``"model"``, ``"data"``, ``"train_y"``)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class ModelFormatError(BiseInputError):
    """The file is not a TorchScript or torch.export archive we can use."""

    def __init__(self, message: str, *, param: str = "model") -> None:
        super().__init__(message, param=param, code="invalid_model")


class DatasetError(BiseInputError):
    """The dataset URI, its files or its contents are unusable."""

    def __init__(self, message: str, *, param: str = "data") -> None:
        super().__init__(message, param=param, code="invalid_dataset")
