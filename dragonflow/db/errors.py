"""Errors raised by NbApi besides the model's ValidationError (bad input).

Every error names the object type, its id, the field concerned and the reason, in the same
format as :class:`dragonflow.model.ValidationError`, so operators read one shape of message.
"""

from __future__ import annotations


class NbError(Exception):
    def __init__(self, table: str, obj_id: str, field: str, reason: str) -> None:
        self.table, self.obj_id, self.field, self.reason = table, obj_id, field, reason
        where = f"{table} {obj_id!r}" if obj_id else table
        super().__init__(f"{where}: field '{field}': {reason}")


class NotFound(NbError):
    def __init__(self, table: str, obj_id: str) -> None:
        super().__init__(table, obj_id, "id", "no such object")


class AlreadyExists(NbError):
    def __init__(self, table: str, obj_id: str) -> None:
        super().__init__(table, obj_id, "id", "an object with this id already exists")


class StaleVersion(NbError):
    def __init__(self, table: str, obj_id: str, reason: str) -> None:
        super().__init__(table, obj_id, "version", reason)


class InUse(NbError):
    def __init__(self, table: str, obj_id: str, users: list[str]) -> None:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        super().__init__(table, obj_id, "id", f"still referenced by {shown}")


class ConcurrentUpdate(NbError):
    """The write kept losing races with other writers; nothing was changed."""
