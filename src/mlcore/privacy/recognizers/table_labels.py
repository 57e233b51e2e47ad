"""Table columns labelled by their header: CSV, TSV, ";"-separated and Markdown tables (see
:func:`labelled_cells`, and :func:`table_context` for streams)."""

from __future__ import annotations

import bisect
import re

from mlcore.privacy.recognizers.context import CONTEXT_WORDS, label_hits

# ---------------------------------------------------------------------------------------------------------
# A table whose header names the column: "name,ssn,iban\nAnn,123456789,GB..." (CSV), the same with tabs
# (TSV) or ";" (spreadsheet exports in comma-decimal locales), and Markdown tables ("| SSN |\n|---|\n| 1... |").
#
# A header cell is a label when it is short (at most 40 characters, no digits) and holds one of the kind's
# label words ("SSN", "customer_ssn", "Sort Code", "account_number"). The rows below it are the lines that
# follow with the same number of cells (a Markdown rule line "|---|:--:|" is skipped; a blank line or a line
# with another number of cells ends the table); the labelled column's cell of each row is handed to the
# recognizer, which reports it only if the whole cell is a valid value of its kind. CSV quoting is honoured
# ('"Lee, Ann"' is one cell). Each table is read once, from its first labelled header: linear time.
# ---------------------------------------------------------------------------------------------------------

_DELIMITERS = ("\t", "|", ";", ",")
# the label words of every kind a table header can name (the recognizers that call `labelled_cells`)
COLUMN_LABELS: tuple[str, ...] = tuple(dict.fromkeys(
    (*CONTEXT_WORDS["SSN"], *CONTEXT_WORDS["ITIN"], *CONTEXT_WORDS["ABA_ROUTING"], *CONTEXT_WORDS["UK_NINO"],
     *CONTEXT_WORDS["DATE_OF_BIRTH"], "account", "acct", "a/c", "acc", "sort code", "sortcode", "sc", "sin",
     "social insurance", "nas", "assurance sociale", "passport")))
_CELL_STRIP = " \t\r\"'*`"
_RULE_LINE = re.compile(r"[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*\r?$")
_CELL: dict[str, re.Pattern[str]] = {}


def _cells(text: str, start: int, end: int, delimiter: str) -> list[tuple[int, int]]:
    """Raw ``(start, end)`` of each cell of the line ``text[start:end]`` split at `delimiter`, a cell that opens
    with a double quote running to its closing quote (CSV: a delimiter inside quotes does not split)."""
    pattern = _CELL.get(delimiter)
    if pattern is None:
        d = re.escape(delimiter)
        pattern = _CELL[delimiter] = re.compile(r'[ \t]*"(?:[^"\n]|"")*"[ \t]*(?=' + d + r"|\r?$)|[^" + d + r"\n]*")
    cells, pos = [], start
    while True:
        m = pattern.match(text, pos, end)
        cells.append((pos, m.end()))
        if m.end() >= end or text[m.end()] != delimiter:
            return cells
        pos = m.end() + 1


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` of a cell without its padding, quotes and markdown marks."""
    while start < end and text[start] in _CELL_STRIP:
        start += 1
    while end > start and text[end - 1] in _CELL_STRIP:
        end -= 1
    return start, end


def _line(text: str, pos: int) -> tuple[int, int]:
    """``(start, end)`` of the line holding `pos` (end at its newline or at the end of the text)."""
    end = text.find("\n", pos)
    return text.rfind("\n", 0, pos) + 1, len(text) if end < 0 else end


# the rest of a header cell after its label, up to the delimiter that ends it, and the part before the label
# from the delimiter or line start that opens it: no digits, at most 40 characters in all
_CELL_REST = re.compile(r"[^\t|;,\n0-9]{0,40}(?:[\t|;,]|\n|\Z)")
_CELL_HEAD = re.compile(r"(?:^|[\t|;,])[^\t|;,\n0-9]{0,40}\Z", re.MULTILINE)


def _header_cell_around(text: str, s: int, e: int) -> bool:
    """Cheap test, before any splitting: can the label at ``text[s:e]`` sit in a header cell (short, no
    digits, a delimiter or the line's end after it)? Most labels are in prose or log lines ("routing number
    021000021") and fail here at once."""
    rest = _CELL_REST.match(text, e)
    return (rest is not None and rest.end() - s <= 42
            and _CELL_HEAD.search(text, max(0, s - 41), s) is not None)


def labelled_cells(text: str, hits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, end)`` of each data cell (stripped as `_stripped` does) in a table column whose header cell is
    a label: one of the label occurrences `hits` (`label_hits` of the kind's words) is in it."""
    out: list[tuple[int, int]] = []
    n, done = len(text), -1  # `done`: end of the last table read; a label inside it was read with its header
    for s, e in hits:
        if s < done or not _header_cell_around(text, s, e):
            continue
        ls, le = _line(text, s)
        done = le  # a line is read as a header once, whatever it holds: no label on it costs another split
        delimiter = next((d for d in _DELIMITERS if d in text[ls:le]), None)
        if delimiter is None:
            continue
        header = _cells(text, ls, le, delimiter)
        if len(header) < 2:
            continue
        columns = []
        for i, (cs, ce) in enumerate(header):
            a, b = _stripped(text, cs, ce)
            k = bisect.bisect_left(hits, (a,))  # the first label at or after the cell's start: is it inside?
            if 0 < b - a <= 40 and k < len(hits) and hits[k][0] < b and not any(c.isdigit() for c in text[a:b]):
                columns.append(i)
        if not columns:
            continue
        pos = le + 1
        if pos < n and delimiter == "|":
            rule_end = _line(text, pos)[1]
            if _RULE_LINE.match(text, pos, rule_end):
                pos = rule_end + 1
        while pos < n:
            rs, re_ = _line(text, pos)
            row = _cells(text, rs, re_, delimiter) if re_ > rs else []
            if len(row) != len(header):
                break
            out.extend(_stripped(text, *row[i]) for i in columns)
            pos = re_ + 1
        done = pos
    return out


def table_context(text: str, cut: int, keep: int) -> str | None:
    """The context a streaming scanner should carry past `cut` when `cut` lies in a table, or None for its
    plain last `keep` characters: the table's header line, then the released text from the start of the line
    that holds ``cut - keep`` (so nothing of the plain context is lost), so the next piece's cells stay under
    their column labels however long ago the header came. When those lines are long, the row that `cut`
    splits stands alone, its cells before the one that holds ``cut - keep`` emptied ("name,ssn\n," for a cut
    inside the second cell; a cell longer than 4 * keep keeps its last `keep` characters). Bounded: None when
    the header passes 4 * keep characters."""
    lo = max(0, cut - keep)
    row = text.rfind("\n", 0, cut) + 1
    header = table_header(text, row)
    if header is None or header[1] - header[0] > 4 * keep or header[0] >= lo:
        return None  # no table, a header too long to carry, or one the plain context holds whole
    hs, he = header
    if not label_hits(text[hs:he], COLUMN_LABELS):
        return None  # no column the recognizers read by its header: the plain context does
    if lo <= he:
        return text[hs:cut]
    start = text.rfind("\n", 0, lo) + 1
    if cut - start <= 4 * keep:
        return text[hs:he] + "\n" + text[start:cut]
    if row > lo:
        return text[hs:he] + "\n" + text[row:cut]
    delimiter = next(d for d in _DELIMITERS if d in text[hs:he])
    cells = _cells(text, row, cut, delimiter)
    k = max(i for i, (cs, _) in enumerate(cells) if cs <= lo)
    tail = cells[k][0] if cut - cells[k][0] <= 4 * keep else lo  # a long cell: its last `keep` characters
    return text[hs:he] + "\n" + delimiter * k + text[tail:cut]


def table_header(text: str, pos: int) -> tuple[int, int] | None:
    """``(start, end)`` of the first line of the table whose rows run up to `pos` (the lines before `pos` with
    the same number of cells, a Markdown rule line skipped), or None when the line before `pos` is no table
    row. Time: linear in the table's length within `text`."""
    le = text.rfind("\n", 0, pos)
    if le < 0:
        return None
    ls = text.rfind("\n", 0, le) + 1
    delimiter = next((d for d in _DELIMITERS if d in text[ls:le]), None)
    if delimiter is None:
        return None
    count = len(_cells(text, ls, le, delimiter))
    if count < 2:
        return None
    header = (ls, le)
    while ls > 0:
        pe = ls - 1
        ps = text.rfind("\n", 0, pe) + 1
        if delimiter == "|" and _RULE_LINE.match(text, ps, pe):
            ls = ps  # the rule line under a Markdown header
            continue
        if len(_cells(text, ps, pe, delimiter)) != count:
            break
        header, ls = (ps, pe), ps
    return header
