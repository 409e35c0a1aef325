"""English-Spanish Bible translation data from SWORD modules.

The modules are data: set-up unpacks them from the sword-text-* .deb files into a cache
(`python -m neft.data.debian bible`; no install, no root). The verses come from `mod2imp` (libsword-utils),
which prints a module as "$$$<Book> <chapter>:<verse>" records of raw OSIS markup; it is the one
package installed, as a program: SWORD's compressed module format has no other reader here. Verses
are paired by reference, and valid/test hold out whole books, so no test verse shares a passage (and
its context) with training verses.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from neft.data.records import DataError, Example, subsample

INSTALL_COMMAND = "apt-get install -y --no-install-recommends libsword-utils"
UNPACK_COMMAND = "python -m neft.data.debian bible"
SWORD_DIR = Path("~/.cache/neft/sword")  # mods.d/ and modules/, as under /usr/share/sword
# The Debian 12 packages of the two modules, at the versions the committed results were made from.
PINNED_VERSIONS = {"sword-text-sparv": "2.60-1", "sword-text-web": "426.0-1"}
SPLITS = ("train", "valid", "test")

Aligned = tuple[str, str, str]  # (reference, source text, target text)

_RECORD_HEADER = re.compile(r"^\$\$\$(.*)$", re.MULTILINE)
_REFERENCE = re.compile(r"^(?P<book>\S.*?) (?P<chapter>\d+):(?P<verse>\d+)$")
_TOKEN = re.compile(r"<[^>]*>|[^<]+")
_TAG = re.compile(r"<\s*(?P<end>/)?\s*(?P<name>[A-Za-z][\w:.-]*)(?P<attrs>[^>]*?)(?P<empty>/)?\s*>")
_ATTR = re.compile(r"([\w:.-]+)\s*=\s*\"([^\"]*)\"")

# Elements whose whole content is apparatus rather than verse text. Speaker labels (Song of
# Solomon in the WEB) are editorial headings that the Spanish text does not have.
_DROPPED_ELEMENTS = frozenset({"note", "title", "speaker"})
# Milestone-style <div sID=.../> ... <div eID=.../> regions that hold prefaces, book introductions
# and the WEB glossary; the glossary sits inside the record for Revelation 22:21.
_DROPPED_DIV_TYPES = frozenset({"front", "introduction", "glossary", "preface", "colophon"})
# Phrase-level OSIS elements: they wrap words (Strong's <w>, <transChange>, ...) and can sit
# mid-word, so removing them must not split a word. Every other tag may separate words; that
# includes <q>, because the WEB often drops the space after a closing red-letter quote
# ("righteousness.”</q><w>Then</w>").
_INLINE_ELEMENTS = frozenset({
    "w", "transChange", "seg", "name", "rdg", "hi", "divineName", "foreign", "reference",
    "catchWord", "abbr", "date", "index", "mentioned", "rdgGroup", "role", "inscription", "a",
})
_INLINE_TAG = re.compile(r"</?(?:{})(?=[\s/>])[^>]*>".format("|".join(sorted(_INLINE_ELEMENTS, key=len, reverse=True))))
# A removed element leaves a word break; these characters already mark one on that side.
_NO_SPACE_AFTER = frozenset("“‘([{¡¿—–-/")
_NO_SPACE_BEFORE = frozenset(",.;:!?’”)]}—–-/…")
# The RV1909 marks words the translators supplied with <transChange>, often glued to the tagged
# word before or after it ("hay allí</w><transChange>también</transChange><w>bdelio"). Only
# enclitic pronouns really belong to the previous word ("sáca</w><transChange>lo</transChange>").
_ADDED_AFTER_WORD = re.compile(r"([^\s<>]*)</w>(<transChange[^>]*>)([^<]*)(?=</transChange>)")
_ADDED_BEFORE_WORD = re.compile(r"</transChange>(?=<w[\s>])")
_ENCLITICS = frozenset({"me", "te", "se", "le", "lo", "la", "nos", "os", "les", "los", "las"})
_CONJUNCTIONS = frozenset({"y", "e", "o", "u", "ni", "que"})
_BREAK = "\x00"
_SPACE_BEFORE_CLOSER = re.compile(r" (?=[,.;:!?”])")


def _mod2imp_environment() -> dict[str, str]:
    # SWORD_PATH makes SWORD read its modules from the unpacked tree rather than a system install.
    return {**os.environ, "SWORD_PATH": str(SWORD_DIR.expanduser())}


def require_sword_module(module: str) -> None:
    """Fail fast, with the command that fixes it, unless `mod2imp` can export `module`."""
    executable = shutil.which("mod2imp")
    if executable is None:
        raise DataError(f"`mod2imp` (libsword-utils) is not on PATH; install it with: {INSTALL_COMMAND}")
    # SWORD ignores a SWORD_PATH without mods.d/ and falls back to the system's modules, which are
    # not the pinned ones that were unpacked (or not there at all).
    if not (SWORD_DIR.expanduser() / "mods.d").is_dir():
        raise DataError(f"no SWORD modules are unpacked in {SWORD_DIR}; unpack them with: {UNPACK_COMMAND}")
    # Ask mod2imp itself rather than scanning mods.d: only mod2imp knows whether SWORD can open the
    # module. The first record marker is enough to know it exists, so the export is stopped there.
    with subprocess.Popen(
        [executable, module], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env=_mod2imp_environment(),
    ) as process:
        first = process.stdout.read(3) if process.stdout else b""
        process.kill()
    if first != b"$$$":
        raise DataError(
            f"SWORD module {module!r} is not in {SWORD_DIR} (mod2imp exports nothing for it); unpack it with: {UNPACK_COMMAND}"
        )


def export_module(module: str) -> str:
    """The raw `mod2imp <module>` export (OSIS markup in "$$$reference" records)."""
    try:
        result = subprocess.run(["mod2imp", module], capture_output=True, check=False, env=_mod2imp_environment())
    except FileNotFoundError:
        raise DataError(f"`mod2imp` (libsword-utils) is not on PATH; install it with: {INSTALL_COMMAND}") from None
    if result.returncode != 0 or not result.stdout.strip():
        detail = " ".join(result.stderr.decode("utf-8", "replace").strip().splitlines()[:1]) or "no output"
        raise DataError(
            f"mod2imp {module} failed (exit {result.returncode}: {detail}); unpack the module with: {UNPACK_COMMAND}"
        )
    return result.stdout.decode("utf-8")


def _records(text: str) -> Iterator[tuple[str, str]]:
    """(header, body) for every "$$$header" record of an imp export."""
    headers = list(_RECORD_HEADER.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        yield header.group(1).strip(), text[header.end():end]


def _is_verse(reference: str) -> bool:
    # Verse 0 holds chapter/book introductions and the "[ Module Heading ]"-style entries have no
    # verse at all; neither is translatable verse text.
    match = _REFERENCE.match(reference)
    return match is not None and int(match.group("verse")) > 0


def _space_added_word(match: re.Match[str]) -> str:
    previous, opening, added = match.groups()
    attached = added in _ENCLITICS and previous.lower() not in _CONJUNCTIONS
    return f"{previous}</w>{'' if attached else ' '}{opening}{added}"


def _join_at_break(match: re.Match[str]) -> str:
    """What a removed element becomes: a space only where words would otherwise run together."""
    text, start, end = match.string, match.start(), match.end()
    if any(char.isspace() for char in match.group()):
        return " "
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if not before or not after or before in _NO_SPACE_AFTER or after in _NO_SPACE_BEFORE:
        return ""
    return " "


def osis_to_text(markup: str) -> str:
    """Plain text of one verse's OSIS markup: apparatus dropped, tags removed, whitespace collapsed."""
    pieces: list[str] = []
    skipping: str | None = None  # name of the dropped element we are inside
    skip_depth = 0  # same-name nesting inside it, so a nested <note> does not end the skip early
    skip_until_eid: str | None = None  # eID that closes a dropped milestone region
    if "<transChange" in markup:
        markup = _ADDED_BEFORE_WORD.sub("</transChange> ", _ADDED_AFTER_WORD.sub(_space_added_word, markup))
    # Strong's-tagged words make up most tags; removing inline tags in one pass keeps parsing fast.
    for token in _TOKEN.findall(_INLINE_TAG.sub("", markup)):
        if not token.startswith("<"):
            if skipping is None and skip_until_eid is None:
                pieces.append(html.unescape(token))
            continue
        tag = _TAG.match(token)
        if tag is None:  # a stray "<" in text, not markup
            if skipping is None and skip_until_eid is None:
                pieces.append(html.unescape(token))
            continue
        name, is_end, is_empty = tag.group("name"), bool(tag.group("end")), bool(tag.group("empty"))
        attrs = dict(_ATTR.findall(tag.group("attrs"))) if name == "div" or name in _DROPPED_ELEMENTS or skip_until_eid else {}
        if skip_until_eid is not None:
            if attrs.get("eID") == skip_until_eid:
                skip_until_eid = None
                pieces.append(_BREAK)
            continue
        if skipping is not None:
            if name == skipping and not is_empty:
                skip_depth += -1 if is_end else 1
                if skip_depth == 0:
                    skipping = None
                    pieces.append(_BREAK)
            continue
        if name == "div" and "sID" in attrs and attrs.get("type") in _DROPPED_DIV_TYPES:
            skip_until_eid = attrs["sID"]
            continue
        # Psalm superscriptions are canonical="true" titles in the WEB but plain verse-1 text in
        # the RV1909; keeping their words keeps the two sides of those verses parallel.
        if name in _DROPPED_ELEMENTS and not is_end and not is_empty and attrs.get("canonical") != "true":
            skipping, skip_depth = name, 1
            continue
        if name not in _INLINE_ELEMENTS:
            pieces.append(_BREAK)
    text = re.sub(rf"[\s{_BREAK}]*{_BREAK}[\s{_BREAK}]*", _join_at_break, "".join(pieces))
    # The WEB sometimes spaces a closing mark off ("walk’ ?”", "penny. ”"); neither language does.
    return _SPACE_BEFORE_CLOSER.sub("", " ".join(text.split()))


def parse_imp(text: str) -> dict[str, str]:
    """{"Book chapter:verse": plain verse text} for every non-empty verse of a mod2imp export."""
    verses: dict[str, str] = {}
    for reference, body in _records(text):
        if not _is_verse(reference):
            continue
        plain = osis_to_text(body)
        if plain:
            verses[reference] = plain
    return verses


def book_of(reference: str) -> str:
    """The book name of a "Book chapter:verse" reference (book names may contain spaces)."""
    match = _REFERENCE.match(reference)
    if match is None:
        raise DataError(f"not a 'Book chapter:verse' reference: {reference!r}")
    return match.group("book")


def align_verses(source: dict[str, str], target: dict[str, str]) -> list[Aligned]:
    """(reference, source, target) for verses non-empty on both sides, in the source's order."""
    return [
        (reference, text, target[reference])
        for reference, text in source.items()
        if text.strip() and target.get(reference, "").strip()
    ]


def chapter_of(reference: str) -> str:
    """The "Book chapter" part of a "Book chapter:verse" reference."""
    book_of(reference)  # validates the shape
    return reference.rsplit(":", 1)[0]


def _last_verses(verses: dict[str, str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for reference in verses:
        chapter, verse = chapter_of(reference), int(reference.rsplit(":", 1)[1])
        last[chapter] = max(verse, last.get(chapter, 0))
    return last


def drop_renumbered_chapters(aligned: list[Aligned], source: dict[str, str], target: dict[str, str]) -> list[Aligned]:
    """`aligned` without the chapters that the two modules number differently.

    The modules follow different versifications (RV1909: KJV, WEB: NRSVA), and where one side's
    chapter ends on another verse, the odd verse was merged into a neighbour or moved to the next
    chapter. Pairing by reference then matches the wrong verses for the rest of that chapter and
    the whole next one (Spanish Jonah 2:1 is English Jonah 1:17), so both chapters are dropped.
    Verses merely missing inside a chapter (the WEB leaves Luke 17:36 empty) shift nothing.
    """
    source_last, target_last = _last_verses(source), _last_verses(target)
    chapters = list(source_last)
    renumbered: set[str] = set()
    for index, chapter in enumerate(chapters):
        if chapter in target_last and source_last[chapter] != target_last[chapter]:
            renumbered.add(chapter)
            following = chapters[index + 1] if index + 1 < len(chapters) else None
            if following is not None and following.rsplit(" ", 1)[0] == chapter.rsplit(" ", 1)[0]:
                renumbered.add(following)
    return [row for row in aligned if chapter_of(row[0]) not in renumbered]


def split_by_book(aligned: list[Aligned], valid_books: list[str], test_books: list[str]) -> dict[str, list[Aligned]]:
    """Whole books to test/valid as configured, every other book to train."""
    both = sorted(set(valid_books) & set(test_books))
    if both:
        raise DataError(f"book(s) {both} are in both valid_books and test_books")
    available = list(dict.fromkeys(book_of(reference) for reference, _, _ in aligned))
    unknown = [book for book in [*valid_books, *test_books] if book not in available]
    if unknown:
        raise DataError(f"book(s) {unknown} not in the aligned verses; available books: {available}")
    valid, test = set(valid_books), set(test_books)
    splits: dict[str, list[Aligned]] = {split: [] for split in SPLITS}
    for row in aligned:
        book = book_of(row[0])
        splits["test" if book in test else "valid" if book in valid else "train"].append(row)
    return splits


def build_bible_splits(
    source_module: str,
    target_module: str,
    instruction: str,
    valid_books: list[str],
    test_books: list[str],
    max_examples: dict[str, int | None],
    seed: int,
) -> dict[str, list[Example]]:
    """Train/valid/test translation examples (source verse -> target verse) held out by book."""
    for module in (source_module, target_module):
        require_sword_module(module)
    source, target = parse_imp(export_module(source_module)), parse_imp(export_module(target_module))
    aligned = drop_renumbered_chapters(align_verses(source, target), source, target)
    if not aligned:
        raise DataError(f"no verse has text in both {source_module} and {target_module}")
    splits = split_by_book(aligned, valid_books, test_books)
    return {
        split: [
            Example(id=reference, prompt=f"{instruction}\n\n{source_text}", target=target_text)
            for reference, source_text, target_text in subsample(rows, max_examples.get(split), seed)
        ]
        for split, rows in splits.items()
    }

