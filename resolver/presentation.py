"""Names from the wire as people see them: DNS presentation format, and the escapes of each output.

A DNS label may hold any octet (RFC 2181 §11), so a name from the wire is hostile
text. `name_from_labels` turns a name into its presentation format (RFC 1035 §5.1)
once, where it is parsed: `\\DDD` for every octet that is not a printable ASCII
character and for every octet >= 0x80, `\\.` for a dot inside a label, `\\\\` for a
backslash, ASCII letters lower-cased (RFC 4343). That text is what the policy
matches, the recorder stores and every output prints: it holds no control byte, no
space and nothing that is not ASCII.

`display_name` is the one function that puts a stored name in front of people (the
CLI, the reports, the mail, logs, metrics, the dashboard). On a name made by
`name_from_labels` it changes nothing; on a row written by a version before this one,
which stored the raw octets, it escapes what must not reach a terminal or a page.

The escapes of each output format sit beside it: `markdown_text` (markdown's own
syntax) and `csv_cell` (OWASP's rule against formula injection).
"""

from __future__ import annotations

import re

# Octets that stand for themselves in a label: letters, digits, '-' and '_' (the
# hostname characters and the underscore of SRV/DKIM owners). Everything else
# printable is legal too, but escaping it costs nothing and keeps markup, quotes
# and pipes out of every output format at once.
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_PLAIN_BYTES = bytes(sorted(_PLAIN))

#: Printable ASCII that presentation format writes as itself after a backslash.
_ESCAPE_SELF = frozenset(b".\\")


def _escape_octet(octet: int) -> str:
    if octet in _ESCAPE_SELF:
        return "\\" + chr(octet)
    return f"\\{octet:03d}"


def label_to_text(label: bytes) -> str:
    """One label in presentation format, ASCII lower-cased."""
    if not label.translate(None, _PLAIN_BYTES):
        return label.lower().decode("ascii")
    return "".join(
        chr(octet) if octet in _PLAIN else _escape_octet(octet) for octet in label.lower()
    )


def name_from_labels(labels: list[bytes]) -> str:
    """A name from the wire in presentation format, without the root's trailing dot.

    The common name (letters, digits, '-', '_') costs one C-level translate; only a
    label with anything else is escaped octet by octet.
    """
    joined = b".".join(labels)
    if not joined.translate(None, _PLAIN_BYTES).replace(b".", b"") and joined.count(b".") == (
        len(labels) - 1 if labels else 0
    ):
        return joined.lower().decode("ascii")
    return ".".join(label_to_text(label) for label in labels)


# What display_name escapes in stored text: anything outside printable ASCII, plus
# the characters that open markup (<, >, &, quotes, backticks) and the pipe of tables.
# Presentation format never holds any of them, so a name made by name_from_labels
# passes through unchanged.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[<>&\"'`|\[\]()*!{}~^$#%+=;:,?@/]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code < 256:
        return f"\\{code:03d}"
    # A character beyond latin-1 never comes from the wire (labels are decoded as
    # latin-1), but a hand-edited row may hold one: escape its UTF-8 octets.
    return "".join(f"\\{octet:03d}" for octet in char.encode("utf-8"))


def display_name(name: str | None) -> str:
    """The one rendering of a name from the wire for people: safe presentation format.

    Idempotent on presentation format; escapes control bytes, non-ASCII and markup
    characters in text stored by older versions. Never returns a control byte.
    """
    if not name:
        return "." if name == "" else ""
    if name.isascii() and not _UNSAFE.search(name):
        return name
    return _UNSAFE.sub(_escape_char, name)


# Markdown: a backslash before each character that can open markup inside a line: code,
# emphasis, links and images, raw HTML, table cells, strikethrough (CommonMark §2.4 allows
# any ASCII punctuation to be escaped). '(' and ')' only matter after ']', which is
# escaped; '.', '-' and '+' only at the start of a line, where our tables never put text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~&])")


def markdown_text(text: str) -> str:
    """Text for a markdown document: its syntax escaped, so it renders as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", strip_controls(text))


#: The first characters that make a spreadsheet read a cell as a formula (OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet opens as a formula: a leading quote where needed."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """Text of our own (a comment, a service name) without control characters.

    For fields people typed, not names from the wire: those go through display_name.
    Newline and tab are kept; every other C0/C1 control becomes U+FFFD.
    """
    return _CONTROLS.sub("\ufffd", text)
