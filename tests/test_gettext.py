"""The En->Zh task source: gettext catalogs read with polib, split by Debian package."""

from __future__ import annotations

import re
from pathlib import Path

import polib
import pytest

from neft.config import compose_config, compose_params, parse_config
from neft.data.gettext import PINNED_VERSIONS, catalog_path, package_messages, split_by_package
from neft.data.records import DataError
from neft.data.sources import build_splits
from neft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LONG = "Cannot open the configuration file for writing"


def write_catalog(locale_dir: Path, domain: str, entries: list[polib.MOEntry | polib.POEntry]) -> Path:
    catalog = polib.POFile()
    catalog.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    catalog.extend(entries)
    path = catalog_path(locale_dir, "zh_CN", domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.save_as_mofile(str(path))
    return path


def test_only_translated_one_line_sentences_without_placeholders_are_kept(tmp_path):
    write_catalog(tmp_path, "tool", [
        polib.POEntry(msgid=LONG, msgstr="无法打开  配置文件进行写入"),
        polib.POEntry(msgid="Open file", msgstr="打开文件"),  # too short
        polib.POEntry(msgid="Cannot open %s for writing right now", msgstr="现在无法打开 %s 进行写入"),
        polib.POEntry(msgid="Cannot open {path} for writing right now", msgstr="现在无法打开 {path} 进行写入"),
        polib.POEntry(msgid="This message has no translation at all", msgstr=""),
        polib.POEntry(msgid="This message is only a fuzzy guess so far", msgstr="这条消息只是猜测", flags=["fuzzy"]),
        polib.POEntry(msgid="Usage: tool [OPTION]...\nDo something useful", msgstr="用法：tool [选项]...\n做点有用的事"),
        polib.POEntry(msgid="The translation of this one stays in English", msgstr="The translation stays in English"),
        polib.POEntry(msgid="--quiet     do not print any messages at all", msgstr="--quiet     不打印任何消息"),
    ])
    kept = package_messages({"tool-package": ["tool"]}, tmp_path, "zh_CN", min_words=6)["tool-package"]
    assert [(pair.source, pair.target) for pair in kept] == [  # in the catalog's order: .mo files sort by msgid
        ("--quiet do not print any messages at all", "--quiet 不打印任何消息"),  # aligned columns collapse
        (LONG, "无法打开 配置文件进行写入"),
    ]
    assert {pair.package for pair in kept} == {"tool-package"}


def test_a_package_stays_in_one_split_and_a_shared_message_goes_to_test(tmp_path):
    shared = polib.POEntry(msgid=LONG, msgstr="无法打开配置文件进行写入")
    write_catalog(tmp_path, "a", [shared, polib.POEntry(msgid="Only package a says this long thing", msgstr="只有甲这么说")])
    write_catalog(tmp_path, "b", [polib.POEntry(msgid="Only package b says this long thing", msgstr="只有乙这么说")])
    write_catalog(tmp_path, "c", [shared])
    messages = package_messages({"pa": ["a"], "pb": ["b"], "pc": ["c"]}, tmp_path, "zh_CN", min_words=6)
    splits = split_by_package(messages, valid_packages=["pb"], test_packages=["pc"])
    assert [(pair.package, pair.source) for pair in splits["test"]] == [("pc", LONG)]
    assert [pair.package for pair in splits["valid"]] == ["pb"]
    assert [pair.source for pair in splits["train"]] == ["Only package a says this long thing"]


def test_a_malformed_catalog_is_named(tmp_path):
    path = catalog_path(tmp_path, "zh_CN", "broken")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00not a catalog at all" * 4)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: not a readable gettext .mo catalog"):
        package_messages({"broken-package": ["broken"]}, tmp_path, "zh_CN", min_words=6)


def test_a_missing_catalog_names_the_unpack_and_the_apt_command(tmp_path):
    with pytest.raises(DataError, match=rf"package\(s\) \['git'\]; unpack them there, no root needed: "
                                        rf"python -m neft.data.debian gettext task.locale_dir={re.escape(str(tmp_path))}; "
                                        r"or, as root, install them with: apt-get install -y --no-install-recommends git$"):
        package_messages({"git": ["git"]}, tmp_path, "zh_CN", min_words=6)


def sentences(prefix: str, count: int) -> list[polib.POEntry]:
    return [polib.POEntry(msgid=f"{prefix} message number {index} is long enough", msgstr=f"{prefix}的第{index}条消息足够长")
            for index in range(count)]


def test_the_task_config_gives_a_package_disjoint_chinese_set(tmp_path):
    # The task's whole path (config -> build_splits) on catalogs built here, shaped like the real ones:
    # a message that train shares with test, one that train repeats with aligned columns in valid,
    # a package with two domains, translations left in English.
    shared_with_test = polib.POEntry(msgid="Both the tool and the tester print this", msgstr="工具和测试者都打印这个")
    write_catalog(tmp_path, "tool", [*sentences("Tool", 4), shared_with_test,
                                     polib.POEntry(msgid="Aligned  columns   in the option help", msgstr="选项帮助中的  对齐列"),
                                     polib.POEntry(msgid="This translation was left in English", msgstr="Left in English")])
    write_catalog(tmp_path, "lib", sentences("Library", 2))
    write_catalog(tmp_path, "lib-extra", sentences("Extra", 1))
    write_catalog(tmp_path, "shell", [*sentences("Shell", 2),
                                      polib.POEntry(msgid="Aligned columns in the option help", msgstr="选项帮助中的对齐列")])
    write_catalog(tmp_path, "tester", [*sentences("Tester", 5), shared_with_test])
    params = compose_params(["task=gettext-en-zh"])
    params["task"].update(locale_dir=str(tmp_path), valid_packages=["shell"], test_packages=["tester"],
                          packages={"tool": ["tool"], "lib": ["lib", "lib-extra"], "shell": ["shell"], "tester": ["tester"]})
    params["task"]["max_examples"].update(test=3, valid=None, train=None)
    task = parse_config(params).task
    splits = build_splits(task, seed=0)

    def sources(split: str) -> list[str]:
        return [example.prompt.split("\n\n", 1)[1] for example in splits[split]]

    assert sources("train") == [*(f"Tool message number {i} is long enough" for i in range(4)),
                                *(f"Library message number {i} is long enough" for i in range(2)),
                                "Extra message number 0 is long enough"]
    assert sources("valid") == ["Aligned columns in the option help", *(f"Shell message number {i} is long enough" for i in range(2))]
    assert len(splits["test"]) == task.max_examples.test
    tester = {"Both the tool and the tester print this", *(f"Tester message number {i} is long enough" for i in range(5))}
    assert set(sources("test")) < tester
    for split, packages in (("valid", task.valid_packages), ("test", task.test_packages)):
        assert {example.id.split("/")[0] for example in splits[split]} <= set(packages)
    assert not {example.id.split("/")[0] for example in splits["train"]} & {*task.valid_packages, *task.test_packages}
    prompts = {split: {example.prompt for example in examples} for split, examples in splits.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["valid"]
    assert all(re.search(r"[\u4e00-\u9fff]", example.target) for examples in splits.values() for example in examples)


def test_every_package_the_task_reads_is_pinned():
    assert sorted(PINNED_VERSIONS) == sorted(compose_config(["task=gettext-en-zh"]).task.packages)


@pytest.mark.parametrize(("change", "message"), [
    ({"test_packages": ["tar", "nano"]}, r"name \['nano'\]: add them to task.packages"),
    ({"valid_packages": ["tar"]}, r"share \['tar'\]: a package belongs to one split"),
])
def test_package_lists_are_checked_when_the_config_loads(change, message):
    params = compose_params(["task=gettext-en-zh"])
    params["task"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(params)
