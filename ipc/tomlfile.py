"""Reading a TOML file a user wrote (``config.toml``, a ``--policy`` file, ``<home>/agents/*.toml``): one reader, so
each says what is wrong with the file in one line instead of a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from labd.ipc.safe_files import read_regular

__all__ = ["MAX_TOML_FILE", "TomlFileError", "read_toml"]

#: the largest TOML file read unless a reader says otherwise (``config.toml``, a policy file): far more than rules
#: and settings take, far less than a mistaken device or dump would
MAX_TOML_FILE = 16 * 1024 * 1024


class TomlFileError(ValueError):
    """The file cannot be read as TOML; the message says why (``cannot read`` it, or what is not valid in it)."""

    def __init__(self, message: str, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable  # the file could not be read at all (OSError), as opposed to not valid TOML


def read_toml(path: Path, limit: int = MAX_TOML_FILE) -> dict[str, Any]:
    """The file's table. TOML is UTF-8 whatever the locale (as :func:`tomllib.load` reads it). Raises
    :class:`TomlFileError`: the OS error's reason, the first byte that is not UTF-8 (and its line), the parser's
    message, or that the file nests too deeply (tomllib recurses: a file of 2000 ``[`` exhausts the stack).
    Read with :func:`read_regular`: a regular file of at most ``limit`` bytes (a FIFO given as ``config.toml`` or
    ``--policy FILE`` hung `labd serve`, `labd run` and `labd policy check`)."""
    try:
        raw = read_regular(path, limit)
    except OSError as exc:
        raise TomlFileError(exc.strerror or str(exc), unreadable=True) from None
    try:
        # a byte order mark (Windows editors write one) is no TOML: tomllib said only "Invalid statement (at line 1)"
        return tomllib.loads(raw.decode().removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TomlFileError(f"not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} (TOML files are UTF-8)") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(str(exc)) from None
    except RecursionError:
        raise TomlFileError("arrays or tables nested too deeply") from None
