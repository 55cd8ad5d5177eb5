"""The one error type the inventory raises: it names the file, the key and the bad value."""

from __future__ import annotations


class InventoryError(ValueError):
    def __init__(self, file: str, key: str, value: object, allowed: str) -> None:
        self.file, self.key, self.value, self.allowed = file, key, value, allowed
        super().__init__(f"{file}: {key}: {value!r} is not valid ({allowed})")
