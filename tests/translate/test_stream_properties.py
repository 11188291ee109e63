"""Property tests: chunk boundaries never change the output; generated upstream streams keep the grammar."""

from __future__ import annotations

import json

from helpers import STREAMS, parse_sse, validate_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anthropic_proxy.translate.stream import StreamTranslator
from anthropic_proxy.wire.accumulate import MessageAccumulator

RECORDINGS = [path.read_bytes() for path in STREAMS]


def run(pieces: list[bytes]) -> bytes:
    translator = StreamTranslator(requested_model="claude-opus-4-5", tool_names={})
    return b"".join(translator.feed(piece) for piece in pieces) + translator.finish()


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(RECORDINGS))), st.lists(st.integers(min_value=0), max_size=40), st.data())
def test_rechunking_gives_identical_output(which, cuts, data):
    raw = RECORDINGS[which]
    # Also cut inside multi-byte UTF-8 characters whenever the recording has some.
    multibyte = [i for i, byte in enumerate(raw) if byte >= 0x80 and (byte & 0xC0) == 0x80]
    if multibyte:
        cuts = cuts + data.draw(st.lists(st.sampled_from(multibyte), max_size=5))
    assert run(split(raw, cuts)) == run([raw])


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(range(len(RECORDINGS))))
def test_byte_by_byte_feeding(which):
    raw = RECORDINGS[which]
    assert run([raw[i : i + 1] for i in range(len(raw))]) == run([raw])


# --- generated upstream streams ------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=12)


@st.composite
def upstream_stream(draw) -> tuple[bytes, dict]:
    """A random but well-formed OpenRouter stream plus what it says (text, reasoning, tool inputs)."""
    chunks: list[dict] = []
    expected = {"text": "", "reasoning": "", "tools": []}
    tool_base = draw(st.sampled_from([0, 1]))  # tool indexes may start at 1
    n_tools = 0
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["text", "reasoning", "encrypted", "tool", "comment", "empty"]))
        if kind == "text":
            piece = draw(_text)
            chunks.append({"delta": {"content": piece}})
            expected["text"] += piece
        elif kind == "reasoning":
            piece = draw(_text)
            detail = {"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}
            chunks.append({"delta": {"content": "", "reasoning": piece, "reasoning_details": [detail]}})
            expected["reasoning"] += piece
        elif kind == "encrypted":
            detail = {
                "type": "reasoning.encrypted",
                "data": draw(st.text("abcXYZ+/=", min_size=1)),
                "index": 0,
            }
            chunks.append({"delta": {"content": "", "reasoning": None, "reasoning_details": [detail]}})
        elif kind == "tool":
            arguments = json.dumps(draw(st.dictionaries(st.text(max_size=5), st.integers() | _text, max_size=3)))
            cut_points = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=4)))
            fragments = [arguments[a:b] for a, b in zip([0, *cut_points], [*cut_points, len(arguments)], strict=True)]
            index = tool_base + n_tools
            call_id = f"call_{n_tools}"
            name = draw(st.sampled_from(["Read", "Bash", "Edit"]))
            chunks.append(
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                }
            )
            chunks.extend(
                {"delta": {"tool_calls": [{"index": index, "function": {"arguments": f}}]}} for f in fragments
            )
            expected["tools"].append((call_id, name, json.loads(arguments)))
            n_tools += 1
        elif kind == "comment":
            chunks.append({"comment": True})
        else:
            chunks.append({"delta": {"content": None}})
    finish = draw(st.sampled_from(["stop", "length", "tool_calls"]))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**5))}
    chunks.append({"delta": {"content": ""}, "finish_reason": finish})
    chunks.append({"delta": {"content": ""}, "finish_reason": finish, "usage": usage})
    lines = []
    for chunk in chunks:
        if chunk.get("comment"):
            lines.append(": OPENROUTER PROCESSING\n\n")
            continue
        body = {
            "id": "gen-1",
            "choices": [{"index": 0, "delta": chunk["delta"], "finish_reason": chunk.get("finish_reason")}],
        }
        if "usage" in chunk:
            body["usage"] = chunk["usage"]
        lines.append(f"data: {json.dumps(body, ensure_ascii=False)}\n\n")
    if draw(st.booleans()):
        lines.append("data: [DONE]\n\n")
    expected["stop_reason"] = (
        "tool_use" if n_tools else {"stop": "end_turn", "length": "max_tokens", "tool_calls": "end_turn"}[finish]
    )
    expected["usage"] = usage
    return "".join(lines).encode(), expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upstream_stream(), st.lists(st.integers(min_value=0), max_size=10))
def test_generated_streams_keep_the_grammar(stream, cuts):
    raw, expected = stream
    out = run(split(raw, cuts))
    assert out == run([raw])
    events = parse_sse(out)
    validate_events(events)
    accumulator = MessageAccumulator()
    for _, data in events:
        accumulator.add(data)
    message = accumulator.finish()
    blocks = message["content"]
    assert "".join(b["text"] for b in blocks if b["type"] == "text") == expected["text"]
    assert "".join(b["thinking"] for b in blocks if b["type"] == "thinking") == expected["reasoning"]
    assert [(b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"] == expected["tools"]
    assert message["stop_reason"] == expected["stop_reason"]
    assert message["usage"]["input_tokens"] == expected["usage"]["prompt_tokens"]
    assert message["usage"]["output_tokens"] == expected["usage"]["completion_tokens"]


@st.composite
def interleaved_tools(draw) -> tuple[bytes, list]:
    """Parallel tool calls whose argument fragments interleave (allowed by the API, unseen in recordings)."""
    calls = []
    for i in range(draw(st.integers(2, 4))):
        arguments = json.dumps({"n": i, "s": draw(_text)})
        cut = draw(st.integers(1, len(arguments) - 1))
        calls.append((i, f"call_{i}", arguments[:cut], arguments[cut:], json.loads(arguments)))
    deltas = [
        {"tool_calls": [{"index": i, "id": cid, "function": {"name": "Read", "arguments": a}}]}
        for i, cid, a, _, _ in calls
    ]
    tails = [{"tool_calls": [{"index": i, "function": {"arguments": b}}]} for i, _, _, b, _ in calls]
    order = draw(st.permutations(tails))
    lines = [f"data: {json.dumps({'id': 'g', 'choices': [{'index': 0, 'delta': d}]})}\n\n" for d in [*deltas, *order]]
    last = {
        "id": "g",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    lines.append(f"data: {json.dumps(last)}\n\n")
    return "".join(lines).encode(), [(cid, "Read", parsed) for _, cid, _, _, parsed in calls]


@settings(max_examples=100, deadline=None)
@given(interleaved_tools())
def test_interleaved_parallel_tool_calls_come_out_whole(stream):
    raw, expected = stream
    events = parse_sse(run([raw]))
    validate_events(events)
    accumulator = MessageAccumulator()
    for _, data in events:
        accumulator.add(data)
    blocks = accumulator.finish()["content"]
    assert [(b["id"], b["name"], b["input"]) for b in blocks] == expected
