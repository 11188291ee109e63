"""The message accumulator: string deltas are joined only when `.message` is read, which must never show."""

from __future__ import annotations

from typing import Any

from anthropic_proxy.wire.accumulate import MessageAccumulator


def start(accumulator: MessageAccumulator, *blocks: dict[str, Any]) -> None:
    accumulator.add({"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {"input_tokens": 3}}})
    for index, block in enumerate(blocks):
        accumulator.add({"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


def test_every_read_shows_all_deltas_so_far_in_the_same_dict():
    accumulator = MessageAccumulator()
    start(accumulator, {"type": "text", "text": ""})
    accumulator.add(delta(0, "text_delta", text="Hel"))
    accumulator.add(delta(0, "text_delta", text="lo"))
    message = accumulator.message
    assert message is not None and message["content"][0]["text"] == "Hello"
    accumulator.add(delta(0, "text_delta", text=" world"))
    assert accumulator.message is message and message["content"][0]["text"] == "Hello world"


def test_a_whole_message_without_reads_in_between():
    accumulator = MessageAccumulator()
    start(accumulator, {"type": "thinking", "thinking": ""}, {"type": "text", "text": "Hi"},
          {"type": "tool_use", "id": "t1", "name": "Read", "input": {}})
    for event in [delta(0, "thinking_delta", thinking="Let me "), delta(1, "text_delta", text=" there"),
                  delta(0, "thinking_delta", thinking="think."), delta(0, "signature_delta", signature="sig"),
                  delta(2, "input_json_delta", partial_json='{"path": '), delta(1, "text_delta", text="!"),
                  delta(2, "input_json_delta", partial_json='"a.txt"}'), {"type": "content_block_stop", "index": 2},
                  {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
                  {"type": "message_stop"}]:
        accumulator.add(event)
    assert accumulator.finish() == {
        "id": "msg_1", "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 9},
        "content": [{"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
                    {"type": "text", "text": "Hi there!"},
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.txt"}}]}
    assert accumulator.stopped


def test_a_field_is_added_where_its_first_delta_put_it():
    accumulator = MessageAccumulator()
    start(accumulator, {"type": "text"})
    accumulator.add(delta(0, "text_delta", text="a"))
    accumulator.add(delta(0, "citations_delta", citation={"cited_text": "x"}))
    accumulator.add(delta(0, "text_delta", text="b"))
    block = accumulator.finish()["content"][0]
    assert list(block) == ["type", "text", "citations"] and block["text"] == "ab"


def test_a_block_started_again_or_a_new_message_keeps_the_earlier_text():
    accumulator = MessageAccumulator()
    start(accumulator, {"type": "text", "text": ""})
    first = accumulator.message
    accumulator.add(delta(0, "text_delta", text="old"))
    accumulator.add({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    accumulator.add(delta(0, "text_delta", text="new"))
    assert accumulator.message["content"][0]["text"] == "new"
    accumulator.add(delta(0, "text_delta", text="er"))
    start(accumulator)  # a second message_start: whoever holds the first message still sees all of it
    assert first["content"][0]["text"] == "newer" and accumulator.message["content"] == []


def test_odd_deltas_change_nothing_and_never_raise():
    accumulator = MessageAccumulator()
    accumulator.add(delta(0, "text_delta", text="before any message"))
    start(accumulator, {"type": "text", "text": None}, {"type": "text", "text": "ok"})
    for event in [delta(0, "text_delta", text="x"), delta(1, "text_delta", text=None),
                  delta(1, "text_delta", text=7), delta(1, ["text_delta"], text="y"), delta(5, "text_delta", text="z"),
                  delta(-1, "text_delta", text="w"), delta(1, "input_json_delta", partial_json=None),
                  {"type": "content_block_stop", "index": 1}]:
        accumulator.add(event)
    assert accumulator.finish()["content"] == [{"type": "text", "text": None}, {"type": "text", "text": "ok"}]


def test_fields_of_any_type_are_ignored_never_raised_on():
    """The store reads every event an upstream sent: whatever a field holds, the event changes what it can."""
    accumulator = MessageAccumulator()
    accumulator.add({"type": "message_start", "message": "not an object"})
    assert accumulator.message == {"content": [], "usage": {}}
    accumulator.add({"type": "message_start", "message": {"content": [1, "x"], "usage": []}})
    for event in [delta(0, "text_delta", text="to a block that is no object"), delta(1, "citations_delta"),
                  {"type": "content_block_start", "index": "2", "content_block": {}},
                  {"type": "content_block_start", "index": -1, "content_block": {}},
                  {"type": "content_block_start", "index": 2, "content_block": "not an object"},
                  {"type": "content_block_delta", "index": 2, "delta": ["not", "an", "object"]},
                  {"type": "content_block_stop", "index": [2]},
                  {"type": "message_delta", "delta": "x", "usage": 3}]:
        accumulator.add(event)
    assert accumulator.finish() == {"content": [1, "x", {}], "usage": {}}
    accumulator.add({"type": "content_block_start", "index": 3, "content_block": {"type": "text", "citations": 5}})
    accumulator.add(delta(3, "citations_delta", citation={"url": "u"}))
    assert accumulator.message["content"][3] == {"type": "text", "citations": 5}
    accumulator.add({"type": "error", "error": "overloaded"})
    assert accumulator.error["type"] == "api_error" and "overloaded" in accumulator.error["message"]


def test_a_block_far_beyond_the_last_is_ignored():
    accumulator = MessageAccumulator()
    start(accumulator, {"type": "text", "text": ""})
    accumulator.add({"type": "content_block_start", "index": 10**12, "content_block": {"type": "text"}})
    accumulator.add({"type": "content_block_start", "index": 3, "content_block": {"type": "text", "text": "b"}})
    assert accumulator.message["content"] == [{"type": "text", "text": ""}, {}, {}, {"type": "text", "text": "b"}]


def test_add_all_is_add_for_each_event():
    """The batch path takes string deltas itself: it must end where `add`, one event at a time, does."""
    events: list[Any] = [{"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 1}}}, "noise",
                         {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
                         delta(0, "thinking_delta", thinking="a"), delta(0, "thinking_delta", thinking="b"),
                         delta(0, "signature_delta", signature="s"), delta(0, "thinking_delta", thinking=7),
                         {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "x"}},
                         delta(1, "text_delta", text="y"), delta(1, "text_delta", text="z"), delta(True, "text_delta",
                                                                                               text="bool index"),
                         {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use"}},
                         delta(2, "input_json_delta", partial_json='{"a":'), delta(2, "input_json_delta",
                                                                                  partial_json="1}"),
                         {"type": "content_block_stop", "index": 2}, delta(5, "text_delta", text="nowhere"),
                         {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}, {"type": "message_stop"}]
    one_by_one, batch = MessageAccumulator(), MessageAccumulator()
    for event in events:
        if isinstance(event, dict):
            one_by_one.add(event)
    batch.add_all(events[:7])
    batch.add_all(events[7:])
    assert batch.finish() == one_by_one.finish()
    assert batch.message["content"][0] == {"type": "thinking", "thinking": "ab", "signature": "s"}
    assert batch.message["content"][2]["input"] == {"a": 1} and batch.stopped
