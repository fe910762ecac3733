"""Checks of the numbers users give, stated once so that the API, the CLI, serve and the configs refuse a
bad value with the same one-line wording.

Floor 0: no imports; each caller passes the exception class its users catch (``RequestError`` for a
generate call, ``ValueError`` for a config).
"""

from __future__ import annotations


def positive_int(value, name: str, *, error: type[Exception] = ValueError, none_ok: bool = False):
    """``value`` itself when it is a whole number >= 1 (True and 1.0 are not), else ``error`` naming ``name``.

    With ``none_ok`` a None passes too (an unset limit), and the message says so."""
    if none_ok and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        accepted = "a whole number >= 1" + (" or None" if none_ok else "")
        raise error(f"{name} must be {accepted}, got {value!r}")
    return value
