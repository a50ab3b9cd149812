"""The one error type for every bad NB input: it names the table, the object and the field."""

from __future__ import annotations


class ValidationError(ValueError):
    """Bad input: unknown field, wrong type, bad value, missing field or missing reference.

    ``field`` is a path into the object, e.g. ``fixed_ips[1].ip_address``.
    """

    def __init__(self, table: str, obj_id: str, field: str, reason: str) -> None:
        self.table = table
        self.obj_id = obj_id
        self.field = field
        self.reason = reason
        where = f"{table} {obj_id!r}" if obj_id else table
        super().__init__(f"{where}: field '{field}': {reason}")

    def __reduce__(self) -> tuple[type[ValidationError], tuple[str, str, str, str]]:
        return (type(self), (self.table, self.obj_id, self.field, self.reason))
