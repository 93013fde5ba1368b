"""The browser skill's pure helpers: arg validation, snapshot JSON/diff/caps, CLI word
parsing, the event log's bounds and reload, the session limit and settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.cli.browser import parse_action_args
from cortex.errors import InvalidArgument
from cortex.skills.browser import BrowserSettings, session_limit
from cortex.workers.browser._args import ActionError, Args, Param
from cortex.workers.browser._events import EventLog
from cortex.workers.browser._snapshot import cap, changes, compact_ax_tree, to_json

SNAPSHOT = """- generic [active] [ref=e1]:
  - heading "Say \\"hi\\"" [level=1] [ref=e2]
  - link "Next" [ref=e3] [cursor=pointer]:
    - /url: /next
  - paragraph [ref=e4]: Hello there
  - text: loose text"""


def test_ai_snapshot_becomes_a_json_tree() -> None:
    """Roles, names (with escaped quotes), refs, attrs, props and inline text all survive."""
    [root] = to_json(SNAPSHOT)
    assert root["ref"] == "e1"
    assert root["attrs"] == {"active": True}
    heading, link, para, text = root["children"]
    assert heading == {"role": "heading", "name": 'Say "hi"', "attrs": {"level": "1"},
                       "ref": "e2"}
    assert link["props"] == {"url": "/next"}
    assert link["attrs"] == {"cursor": "pointer"}
    assert para["text"] == "Hello there"
    assert text == {"role": "text", "text": "loose text"}


def test_changes_show_only_added_and_removed_lines() -> None:
    """The diff mode lists + and - lines, or says nothing changed."""
    after = SNAPSHOT.replace("Hello there", "Bye")
    diff = changes(SNAPSHOT, after)
    assert diff.splitlines() == ["- " + SNAPSHOT.splitlines()[4], "+ " + after.splitlines()[4]]
    assert changes(SNAPSHOT, SNAPSHOT) == "(no changes since the last snapshot)"


def test_cap_marks_what_it_cut() -> None:
    """Text over the cap is cut and says how much and how to get less."""
    assert cap("short", 10, hint="h") == ("short", False)
    text, cut = cap("x" * 50, 10, hint="scope it")
    assert cut
    assert text.endswith("[cut: showing 10 of 50 characters; scope it]")


def test_compact_ax_tree_drops_ignored_nodes() -> None:
    """The verbose CDP tree keeps role, name, children and properties of unignored nodes."""
    nodes = [{"nodeId": "1", "ignored": True},
             {"nodeId": "2", "role": {"value": "button"}, "name": {"value": "Go"},
              "childIds": ["3"], "backendDOMNodeId": 7,
              "properties": [{"name": "focusable", "value": {"value": True}}]}]
    assert compact_ax_tree(nodes) == [{"id": "2", "role": "button", "name": "Go",
                                       "backend_node_id": 7, "children": ["3"],
                                       "props": {"focusable": True}}]


def test_args_are_validated_strictly() -> None:
    """Unknown names, wrong types and bad choices are refused naming what is allowed."""
    params = {"count": Param("int", 1), "button": Param("str", "left", ("left", "right")),
              "keys": Param("list[str]")}
    args = Args("click", {"action": "click", "count": 2.0}, params)
    assert (args["count"], args["button"], args.given("keys")) == (2, "left", False)
    with pytest.raises(ActionError, match="does not take bogus; it takes: button, count"):
        Args("click", {"bogus": 1}, params)
    with pytest.raises(ActionError, match="count must be int"):
        Args("click", {"count": 1.5}, params)
    with pytest.raises(ActionError, match="count must be int"):
        Args("click", {"count": True}, params)
    with pytest.raises(ActionError, match="button must be one of left, right"):
        Args("click", {"button": "middle"}, params)
    with pytest.raises(ActionError, match="keys must be list"):
        Args("click", {"keys": [1]}, params)
    with pytest.raises(ActionError, match="needs keys or count"):
        Args("click", {}, {"keys": Param("list[str]"), "count": Param("int")}).require(
            "keys", "count")


def test_cli_words_fill_positional_slots_then_named_args() -> None:
    """Words fill the action's slots in order; KEY=VALUE words are named, JSON-decoded."""
    assert parse_action_args("navigate", ["https://x.test/?a=b"]) == {
        "url": "https://x.test/?a=b"}
    assert parse_action_args("type", ["e7", "hello world", "submit=true"]) == {
        "ref": "e7", "text": "hello world", "submit": True}
    assert parse_action_args("tabs", ["select", "2"]) == {"op": "select", "index": 2}
    assert parse_action_args("upload", ["e3", "/a", "/b"]) == {"ref": "e3",
                                                               "paths": ["/a", "/b"]}
    assert parse_action_args("wait", ["text=Done", "timeout_s=2.5"]) == {
        "text": "Done", "timeout_s": 2.5}
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        parse_action_args("click", ["e1", "extra"])


def test_event_log_numbers_filters_and_reloads(tmp_path: Path) -> None:
    """Events get dense seqs, filter by kind/level/url/failure, and a new log (a new
    worker) reads them back from the file and goes on numbering."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.add("console", level="error", text="a", url="http://x/1")
    log.add("response", status=404, url="http://x/missing")
    log.add("response", status=200, url="http://x/ok")
    log.add("requestfailed", level="error", url="http://y/", error="net::ERR_X")
    assert [e["seq"] for e in log.since(0)[0]] == [1, 2, 3, 4]
    assert [e["seq"] for e in log.since(0, failed_only=True)[0]] == [2, 4]
    assert [e["seq"] for e in log.since(1, kinds={"response"})[0]] == [2, 3]
    assert [e["seq"] for e in log.since(0, level="error", url="x/1")[0]] == [1]
    assert log.since(0, limit=2) == (log.since(0)[0][:2], True)
    with path.open("a") as f:
        f.write('{"torn": ')  # a line cut by a kill -9
    again = EventLog(path)
    assert again.last_seq == 4
    assert again.add("note", text="n")["seq"] == 5


def test_session_limit_and_settings() -> None:
    """The limit follows memory (at least one); settings come from the environment."""
    assert session_limit(512) == 1
    assert session_limit(16 * 1024) == (16 * 1024 - 1024) // 600
    settings = BrowserSettings.from_env({"CORTEX_BROWSER_SESSIONS": "3",
                                         "CORTEX_BROWSER_FILE_URLS": "1"})
    assert (settings.max_sessions, settings.allow_file_urls) == (3, True)
    with pytest.raises(InvalidArgument, match="CORTEX_BROWSER_SESSIONS is a count"):
        BrowserSettings.from_env({"CORTEX_BROWSER_SESSIONS": "many"})
