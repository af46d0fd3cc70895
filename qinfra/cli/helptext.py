"""click's help-page layout for the root `qinfra --help`, without importing click.

Importing click alone costs about as much as starting the interpreter, so `qinfra`, `qinfra -h`
and `qinfra --help` print the root page from plain data here. The layout follows click 8's
HelpFormatter (usage line, wrapped description, definition lists, shortened command summaries);
tests/test_cli_startup.py compares the two byte for byte across widths and program names, so a
click upgrade that changes its layout fails there rather than drifting silently.
"""

from __future__ import annotations

import os
import sys
import textwrap

# click.formatting.HelpFormatter's defaults: indent step, widest first column, column gap.
_INDENT = 2
_COL_MAX = 30
_COL_SPACING = 2


def terminal_columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it ($COLUMNS, else stdout's
    terminal, else 80), without importing shutil (and with it zlib, bz2, lzma) for every --help."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def help_width(max_content_width: int | None = None) -> int:
    """The width click's HelpFormatter wraps to: the terminal's, at most 80, less 2, at least 50."""
    return max(min(terminal_columns(), max_content_width or 80) - 2, 50)


def program_name() -> str:
    """The name click shows in `Usage:` (click.utils._detect_program_name's rule): the script's
    file name, or `python -m <module>` when run with -m."""
    path = sys.argv[0]
    package = getattr(sys.modules["__main__"], "__package__", None)
    if package in {None, ""}:
        return os.path.basename(path)
    name = os.path.splitext(os.path.basename(path))[0]
    module = package if name == "__main__" else f"{package}.{name}"
    return f"python -m {module.lstrip('.')}"


def _fill(text: str, width: int, indent: str = "", subsequent: str | None = None) -> str:
    """One paragraph wrapped as click.formatting.wrap_text wraps it (newlines kept as spaces)."""
    wrapper = textwrap.TextWrapper(width, initial_indent=indent, replace_whitespace=False,
                                   subsequent_indent=indent if subsequent is None else subsequent)
    return wrapper.fill(text.expandtabs())


def _paragraphs(text: str, width: int, indent: str) -> str:
    """Paragraphs (blank-line separated) each re-wrapped, as wrap_text(preserve_paragraphs=True)
    does for text whose lines start flush left and carry no click `\\b` no-rewrap marker."""
    blocks = [" ".join(block.splitlines()) for block in text.split("\n\n") if block.strip()]
    return "\n\n".join(_fill(block, width, indent) for block in blocks)


def _usage(prog: str, args: str, width: int) -> str:
    """HelpFormatter.write_usage at indent 0: args beside the prefix when 20 columns are left."""
    prefix = f"Usage: {prog} "
    if width >= len(prefix) + 20:
        return _fill(args, width, prefix, " " * len(prefix)) + "\n"
    indent = " " * (len("Usage: ") + 4)
    return f"{prefix}\n{_fill(args, width, indent)}\n"


def _definitions(rows: list[tuple[str, str]], width: int) -> str:
    """HelpFormatter.write_dl at one indent step: terms in a column, text wrapped beside them."""
    first_col = min(max(len(term) for term, _ in rows), _COL_MAX) + _COL_SPACING
    text_width = max(width - first_col - 2, 10)
    out: list[str] = []
    for term, text in rows:
        out.append(" " * _INDENT + term)
        if not text:
            out.append("\n")
            continue
        if len(term) <= first_col - _COL_SPACING:
            out.append(" " * (first_col - len(term)))
        else:
            out.append("\n" + " " * (first_col + _INDENT))
        lines = _paragraphs(text, text_width, "").splitlines() or [""]
        out.append(lines[0] + "\n")
        out.extend(" " * (first_col + _INDENT) + line + "\n" for line in lines[1:])
    return "".join(out)


def short_help(text: str, limit: int) -> str:
    """A command's one-line summary as click lists it: the first paragraph up to its first full
    stop, shortened with `...` to `limit` columns (click.utils._make_default_short_help)."""
    words = text.partition("\n\n")[0].split()
    for i, word in enumerate(words):
        if word.endswith(".") and (i == len(words) - 1 or not words[i + 1][0].islower()):
            words = words[: i + 1]
            break
    line = " ".join(words)
    if len(line) <= limit:
        return line
    if limit < len("..."):
        return "..."
    return textwrap.shorten(line, limit, placeholder="...", break_on_hyphens=False).strip()


def group_help(prog: str, description: str, options: list[tuple[str, str]],
               commands: dict[str, str], width: int) -> str:
    """A click group's help page (Command.get_help): usage, description, options, commands.

    `description` is already dedented (what inspect.cleandoc gives click), `options` are the
    (flags, help) rows in click's order, `commands` maps each name to its help text."""
    limit = width - 6 - max(len(name) for name in commands)
    listing = [(name, short_help(commands[name], limit)) for name in sorted(commands)]
    page = [_usage(prog, "[OPTIONS] COMMAND [ARGS]...", width),
            "\n" + _paragraphs(description, width, " " * _INDENT) + "\n",
            "\nOptions:\n" + _definitions(options, width),
            "\nCommands:\n" + _definitions(listing, width)]
    return "".join(page).rstrip("\n")
