"""The SWORD Bible source: OSIS clean-up, verse alignment, book splits, and the real modules."""

from __future__ import annotations

import pytest

from neft.data import bible
from neft.data.bible import (
    INSTALL_COMMAND,
    UNPACK_COMMAND,
    align_verses,
    book_of,
    build_bible_splits,
    chapter_of,
    drop_renumbered_chapters,
    export_module,
    parse_imp,
    require_sword_module,
    split_by_book,
)
from neft.data.records import DataError, Example

SPANISH, ENGLISH = "spaRV1909eb", "engWEB2015eb"

# Shaped like mod2imp output: module/testament headings, verse-0 introductions, multi-line bodies.
FIXTURE = """$$$[ Module Heading ]

$$$[ Testament 1 Heading ]
<milestone type="x-importer" subType="x-osis2mod" n="$Rev: 3769 $"/>
$$$Genesis 0:0
<div sID="g1" type="introduction"/><title type="main">Preface</title> Book introduction.<div eID="g1" type="introduction"/>
$$$Genesis 1:0
<chapter n="1" osisID="Gen.1" sID="Gen.1"/>
$$$Genesis 1:1
<w lemma="strong:H0430">God</w><note placement="foot"><reference type="annotateRef">1:1 </reference>The Hebrew is <catchWord>Elohim</catchWord>.</note><w lemma="strong:H1254">created</w> the heavens &amp; the earth.
$$$Genesis 1:2
<title type="x-heading">A <hi type="bold">heading</hi> with a <note>note <note>inside a note</note> still note</note> in it</title>The earth was<note placement="foot">outer <note>inner</note> outer again</note>  empty,<note n="b">x</note>
   and   dark.
$$$Genesis 1:3

$$$Psalms 3:1
<title canonical="true" type="psalm">A Psalm by David.</title> <lg sID="a"/><l sID="b"/>Yahweh, how <q who="Jesus">many</q>!<l eID="b"/> <speaker>Beloved</speaker> Selah.
$$$Psalms 3:2
“Who touched me?”</q><w lemma="strong:G1">Then</w> he said &lt;no&gt; &#8220;quote&#8221; <lb type="x-p"/>here.
$$$Revelation of John 22:21
Amen.<div sID="x" type="glossary"/> <title>Glossary</title> Abba: father. <div sID="y" type="introduction"/>More.<div eID="y" type="introduction"/><div eID="x" type="glossary"/>
$$$II Corinthians 6:1
<w>Y</w> <w>ASÍ</w><transChange type="added">nosotros</transChange>, <w>sáca</w><transChange type="added">lo</transChange> <w>y</w><transChange type="added">la</transChange> <transChange type="added">lo</transChange><w>hizo</w>.
"""


def test_parse_imp_keeps_only_verses_with_text():
    verses = parse_imp(FIXTURE)
    assert list(verses) == ["Genesis 1:1", "Genesis 1:2", "Psalms 3:1", "Psalms 3:2", "Revelation of John 22:21", "II Corinthians 6:1"]


def test_notes_are_dropped_with_their_content_and_leave_a_word_break():
    verses = parse_imp(FIXTURE)
    assert verses["Genesis 1:1"] == "God created the heavens & the earth."
    # Nested notes inside a title, and a nested note whose inner close must not end the outer one.
    assert verses["Genesis 1:2"] == "The earth was empty, and dark."


def test_titles_speakers_and_glossary_are_dropped_but_canonical_psalm_titles_kept():
    verses = parse_imp(FIXTURE)
    assert verses["Psalms 3:1"] == "A Psalm by David. Yahweh, how many! Selah."
    assert verses["Revelation of John 22:21"] == "Amen."


def test_entities_unescaped_and_missing_space_after_closing_quote_restored():
    assert parse_imp(FIXTURE)["Psalms 3:2"] == "“Who touched me?” Then he said <no> “quote” here."


def test_added_words_are_separated_but_enclitics_stay_attached():
    assert parse_imp(FIXTURE)["II Corinthians 6:1"] == "Y ASÍ nosotros, sácalo y la lo hizo."


def test_space_before_closing_punctuation_is_removed():
    text = "$$$John 5:12\n<q>‘Take up your mat and walk’</q> ?” and <note>n</note> ”\n"
    assert parse_imp(text) == {"John 5:12": "‘Take up your mat and walk’?” and”"}


def test_book_and_chapter_of_reference():
    assert book_of("I Samuel 3:4") == "I Samuel"
    assert book_of("Revelation of John 22:21") == "Revelation of John"
    assert chapter_of("Song of Solomon 2:10") == "Song of Solomon 2"
    with pytest.raises(DataError, match="reference"):
        book_of("Genesis")


def test_align_verses_keeps_source_order_and_drops_one_sided_or_empty():
    source = {"Ruth 1:2": "dos", "Ruth 1:1": "uno", "Ruth 1:3": "tres", "Ruth 1:4": "cuatro"}
    target = {"Ruth 1:1": "one", "Ruth 1:2": "two", "Ruth 1:4": "  ", "Ruth 1:5": "five"}
    assert align_verses(source, target) == [("Ruth 1:2", "dos", "two"), ("Ruth 1:1", "uno", "one")]


def test_chapters_numbered_differently_are_dropped_with_the_next_chapter():
    # Spanish Jonah 1 ends a verse early (its 1:17 is Spanish 2:1), so Jonah 2 pairs wrong verses too.
    source = {f"Jonah 1:{v}": "es" for v in range(1, 17)} | {f"Jonah 2:{v}": "es" for v in range(1, 11)}
    source |= {f"Jonah 3:{v}": "es" for v in range(1, 11)} | {"Luke 17:35": "es", "Luke 17:36": "es", "Luke 17:37": "es"}
    target = {f"Jonah 1:{v}": "en" for v in range(1, 18)} | {f"Jonah 2:{v}": "en" for v in range(1, 11)}
    target |= {f"Jonah 3:{v}": "en" for v in range(1, 11)} | {"Luke 17:35": "en", "Luke 17:37": "en"}
    kept = drop_renumbered_chapters(align_verses(source, target), source, target)
    assert {chapter_of(reference) for reference, _, _ in kept} == {"Jonah 3", "Luke 17"}
    assert [reference for reference, _, _ in kept if reference.startswith("Luke")] == ["Luke 17:35", "Luke 17:37"]


ALIGNED = [
    ("Ruth 1:1", "uno", "one"),
    ("Ruth 1:2", "dos", "two"),
    ("Jonah 1:1", "tres", "three"),
    ("Philippians 1:1", "cuatro", "four"),
    ("Joel 1:1", "cinco", "five"),
]


def test_split_by_book_sends_whole_books_to_valid_and_test():
    splits = split_by_book(ALIGNED, valid_books=["Joel"], test_books=["Ruth", "Philippians"])
    assert [row[0] for row in splits["test"]] == ["Ruth 1:1", "Ruth 1:2", "Philippians 1:1"]
    assert [row[0] for row in splits["valid"]] == ["Joel 1:1"]
    assert [row[0] for row in splits["train"]] == ["Jonah 1:1"]


def test_split_by_book_rejects_unknown_books_and_lists_the_available_ones():
    with pytest.raises(DataError) as error:
        split_by_book(ALIGNED, valid_books=["Joel"], test_books=["1 Samuel"])
    assert "'1 Samuel'" in str(error.value) and "available books: ['Ruth', 'Jonah', 'Philippians', 'Joel']" in str(error.value)


def test_split_by_book_rejects_a_book_in_both_lists():
    with pytest.raises(DataError, match="both valid_books and test_books"):
        split_by_book(ALIGNED, valid_books=["Ruth", "Joel"], test_books=["Ruth"])


def imp_for(verses: dict[str, str]) -> str:
    return "$$$[ Module Heading ]\n\n" + "".join(f"$$${reference}\n{text}\n" for reference, text in verses.items())


def fake_modules(monkeypatch: pytest.MonkeyPatch, modules: dict[str, dict[str, str]]) -> None:
    monkeypatch.setattr(bible, "require_sword_module", lambda module: None)
    monkeypatch.setattr(bible, "export_module", lambda module: imp_for(modules[module]))


def test_build_bible_splits_subsamples_deterministically_in_canonical_order(monkeypatch):
    spanish = {f"Genesis 1:{v}": f"verso {v}" for v in range(1, 31)} | {f"Ruth 1:{v}": f"rut {v}" for v in range(1, 5)}
    english = {f"Genesis 1:{v}": f"verse {v}" for v in range(1, 31)} | {f"Ruth 1:{v}": f"ruth {v}" for v in range(1, 5)}
    fake_modules(monkeypatch, {"es": spanish, "en": english})
    arguments = dict(source_module="es", target_module="en", instruction="Translate.", valid_books=[], test_books=["Ruth"])
    first = build_bible_splits(**arguments, max_examples={"train": 10, "valid": None, "test": None}, seed=3)
    again = build_bible_splits(**arguments, max_examples={"train": 10, "valid": None, "test": None}, seed=3)
    other = build_bible_splits(**arguments, max_examples={"train": 10, "valid": None, "test": None}, seed=4)
    assert first == again and first["train"] != other["train"]
    train_ids = [example.id for example in first["train"]]
    assert len(train_ids) == 10 and train_ids == sorted(train_ids, key=lambda r: int(r.rsplit(":", 1)[1]))
    assert first["test"][0] == Example(id="Ruth 1:1", prompt="Translate.\n\nrut 1", target="ruth 1")
    assert len(first["test"]) == 4 and first["valid"] == []


def test_require_sword_module_names_the_unpack_and_the_install_command(monkeypatch, tmp_path):
    with pytest.raises(DataError) as error:
        require_sword_module("noSuchModule")
    assert UNPACK_COMMAND in str(error.value) and "noSuchModule" in str(error.value)
    # Only the unpacked tree counts, even where the module is also installed system-wide.
    monkeypatch.setattr(bible, "SWORD_DIR", tmp_path)
    with pytest.raises(DataError, match=f"no SWORD modules are unpacked in {tmp_path}; unpack them with: {UNPACK_COMMAND}$"):
        require_sword_module(ENGLISH)
    (tmp_path / "mods.d").mkdir()
    with pytest.raises(DataError, match=f"SWORD module '{ENGLISH}' is not in {tmp_path} .*: {UNPACK_COMMAND}$"):
        require_sword_module(ENGLISH)
    monkeypatch.setenv("PATH", str(tmp_path))  # no mod2imp there
    with pytest.raises(DataError, match=f"mod2imp.*{INSTALL_COMMAND}"):
        require_sword_module(ENGLISH)
    with pytest.raises(DataError, match=f"mod2imp.*{INSTALL_COMMAND}"):
        export_module(ENGLISH)


@pytest.fixture(scope="module")
def real_splits():
    return build_bible_splits(
        source_module=SPANISH,
        target_module=ENGLISH,
        instruction="Translate the following Spanish Bible verse into English.",
        valid_books=["Joel", "Titus", "I Thessalonians", "Habakkuk"],
        test_books=["Ruth", "Esther", "Amos", "Philippians", "James", "I Peter"],
        max_examples={"train": None, "valid": None, "test": None},
        seed=0,
    )


def test_real_modules_align_and_hold_out_whole_books(real_splits):
    total = sum(len(examples) for examples in real_splits.values())
    assert total > 30000
    test_books = {book_of(example.id) for example in real_splits["test"]}
    assert test_books == {"Ruth", "Esther", "Amos", "Philippians", "James", "I Peter"}
    assert not test_books & {book_of(example.id) for example in real_splits["train"]}
    assert not {book_of(example.id) for example in real_splits["valid"]} & {book_of(example.id) for example in real_splits["train"]}
    assert 600 <= len(real_splits["test"]) <= 1000


def test_real_modules_give_clean_parallel_text(real_splits):
    by_id = {example.id: example for examples in real_splits.values() for example in examples}
    assert by_id["Ruth 1:16"].target.startswith("Ruth said, “Don’t urge me to leave you")
    assert by_id["Ruth 1:16"].prompt.startswith("Translate the following Spanish Bible verse into English.\n\nY Ruth respondió")
    assert by_id["Genesis 1:1"].target == "In the beginning, God created the heavens and the earth."
    assert by_id["Genesis 2:12"].prompt.endswith("hay allí también bdelio y piedra cornerina.")
    assert by_id["Psalms 23:1"].target == "A Psalm by David. Yahweh is my shepherd; I shall lack nothing."
    assert by_id["Revelation of John 22:21"].target == "The grace of the Lord Jesus Christ be with all the saints. Amen."
    assert "Jonah 2:1" not in by_id  # renumbered: Spanish 2:1 is English 1:17
    for example in by_id.values():
        for text in (example.prompt, example.target):
            assert "<" not in text and ">" not in text and "&amp;" not in text and "  " not in text.replace("\n\n", " ")
