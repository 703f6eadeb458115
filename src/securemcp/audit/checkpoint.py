"""C2SP ``tlog-checkpoint`` v1.0.0: the signed statement "this log had N records with root R".

The checkpoint body is the text of a signed note (:mod:`securemcp.audit.note`)::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 RFC 9162 root hash>\\n

``origin`` names the log (securemcp uses the log id, which is also each record's ``log`` field).
Optional extension lines are accepted when parsing and kept, but securemcp never writes any.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final

from securemcp.audit.note import Note, NoteError, parse_note

__all__ = ["MAX_SIZE", "Checkpoint", "parse_checkpoint"]

_SIZE: Final = re.compile(r"0|[1-9][0-9]*")
#: Tree sizes are unsigned 64-bit integers (as in the Go reference implementation).
MAX_SIZE: Final = 2**64 - 1
_MAX_SIZE_DIGITS: Final = len(str(MAX_SIZE))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint body: log ``origin``, tree ``size`` and RFC 9162 ``root`` (32 bytes)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The note text to sign."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly (a size beyond 64 bits is a :class:`NoteError`)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash line")
        origin, size, root_b64, *extensions = lines[:-1]
        if not origin or origin.strip() != origin:
            raise NoteError("a checkpoint origin must be non-empty with no surrounding space")
        if not _SIZE.fullmatch(size):
            raise NoteError("a checkpoint size is decimal with no leading zeros")
        # Checked on the text first: int() of thousands of digits is slow or a ValueError.
        if len(size) > _MAX_SIZE_DIGITS or int(size) > MAX_SIZE:
            raise NoteError("a checkpoint size must fit in 64 bits")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise NoteError("a checkpoint root must be base64") from exc
        if len(root) != 32 or base64.b64encode(root).decode() != root_b64:
            raise NoteError("a checkpoint root is the canonical base64 of 32 bytes")
        if any(not line for line in extensions):
            raise NoteError("checkpoint extension lines must not be empty")
        return cls(origin, int(size), root, tuple(extensions))


def parse_checkpoint(note_text: str) -> tuple[Checkpoint, Note]:
    """Parse a signed checkpoint note into its body and note (signatures not yet checked)."""
    note = parse_note(note_text)
    return Checkpoint.parse_text(note.text), note
