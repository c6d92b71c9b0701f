"""SFT traces in the shapes users have, mapped to one record: `Trace` = prompt + response segments.

A segment is `(text, trainable)`: trainable text is what the model writes itself (reasoning, code,
the answer); interpreter output is not, because at rollout time the harness writes it. Segments are
rendered in one tag style (the style the model is trained for), exactly as the rollout would produce
them: the model's text up to and including the style's `stop`, then `style.wrap_output(output)`, then
the model's next text. Whitespace around interpreter spans in the data is therefore normalised to
the style's own (`</code>` + `\\n<interpreter>\\n...\\n</interpreter>\\n\\n` + next text): it is the
harness's text, and teaching the model other whitespace there would teach what it never sees.

Shapes (one row each; `id` and `answer` fields are optional):

(a) ReTool-SFT: `{"messages": [{"role": "system"|"user", ...}, {"role": "assistant", "content":
    "...<code>\\n```python\\n...\\n```\\n</code>\\n<interpreter>\\n...\\n</interpreter>\\n...<answer>\\boxed{..}</answer>"}]}`.
(b) Tool-role messages: an assistant message whose code is inline (ending in a ```` ```python ```` fence
    or a closed code block of a known style) or in OpenAI `tool_calls` (argument `code`, `python`,
    `source` or `script`; arguments as a JSON string, an object, or raw code), followed by one
    `{"role": "tool", "content": output}` message per call. Code is re-written with `style.wrap_code`.
(c) ToRL fences (```` ```python ```` ... ```` ``` ```` then ```` ```output ```` ... ```` ``` ````) in a `messages`
    list or in a `{"prompt", "response"}` (or `"completion"`) pair; `prompt` may be text (used verbatim)
    or a message list.
(d) TRL's conversational prompt-completion: `prompt` and `completion` both message lists (the
    completion's assistant and tool messages read as in (a) and (b)).
(e) TRL's language-modeling `{"text": ...}`: no prompt; the whole text is trained as written (the
    interpreter output inside it excepted), as TRL trains it. The style's RL prompt is not applied to
    such rows, so a model trained on them sees another prompt in RL: prefer (a)-(d) when the data has one.

The assistant text of any shape is read in the training style when it uses that style's tags, else in
whichever known style (ReTool, ToRL) it does use; code of a different style is re-written with
`style.wrap_code` (its answer tags are left as written).

Rejected, with file:line and reason: no assistant message; a user message after the assistant turn
(multi-turn chats); an unclosed code block or interpreter tag; interpreter output or a tool message
with no code call before it; a code call with no output after it (the rollout always answers a call);
a tool call without code.

Simplifications: tool messages are matched to calls by `tool_call_id` when given, else in order; the
answer, when the row has none, is the last `\\boxed{}` of the response. Not covered: multi-turn
conversations, several assistant turns with user feedback, images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tirl.data.rows import DataError, Loaded, collect, iter_rows
from tirl.formats import RETOOL, TORL, TagStyle, extract_boxed, extract_code, get_style

PROMPT_ROLES = ("system", "user")
CODE_ARG_KEYS = ("code", "python", "source", "script")


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool
    """True for the model's own text (loss on), False for interpreter output (loss off)."""


@dataclass
class Trace:
    """One SFT example: a prompt and the assistant's response as segments, in one tag style."""

    id: str
    prompt_messages: list[dict[str, str]]
    """System/user messages before the assistant turn (for prompt/response rows: one user message)."""
    segments: list[Segment]
    prompt_text: str | None = None
    """A prompt given as plain text (prompt/response rows); used verbatim without a chat template."""
    answer: str | None = None
    style: str = "retool"
    source: str = ""
    """Where the row came from (`file:line`), for messages from later stages."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def response(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def problem(self) -> str:
        """The last user message (or the text prompt): the question, for rebuilding the prompt."""
        users = [m["content"] for m in self.prompt_messages if m["role"] == "user"]
        return users[-1] if users else (self.prompt_text or "")


# --- parsing assistant text into events ----------------------------------------------------------
# Events: ("text", str) model prose; ("code", code, raw-or-None) a closed code block, `raw` its text
# as written in the training style (kept verbatim) or None (re-written); ("output", str).


def _opener(style: TagStyle) -> str:
    return style.code_open.split("\n", 1)[0]


def _out_open(style: TagStyle) -> str:
    # ReTool's output opens with its own tag; ToRL's opener is the stop itself (```output).
    return style.output_prefix.strip() or style.stop


def _out_close(style: TagStyle) -> str:
    return style.output_suffix.strip()


def _line_of(text: str, i: int) -> str:
    return f"response line {text.count(chr(10), 0, i) + 1}"


def detect_style(text: str, style: TagStyle) -> TagStyle:
    """The style `text` is written in: `style` if its tags occur, else the first known style whose do."""
    for s in [style] + [s for s in (RETOOL, TORL) if s != style]:
        if _out_open(s) in text or s.stop in text:
            return s
    return style


def parse_events(text: str, src: TagStyle, dst: TagStyle) -> list[tuple]:
    """Split assistant text written in style `src` into text / code / output events."""
    events: list[tuple] = []
    opener, out_open, out_close = _opener(src), _out_open(src), _out_close(src)
    fence_like = opener.startswith("```")  # an unclosed ```python fence is just shown code, not a call
    pos = 0
    while True:
        start = text.find(opener, pos)
        stop = text.find(src.stop, start + len(opener)) if start >= 0 else -1
        if start < 0 or stop < 0:
            if start >= 0 and not fence_like:
                raise DataError(f"unclosed {opener!r} at {_line_of(text, start)} (no {src.stop!r} after it)")
            events.append(("text", text[pos:]))
            break
        start = text.rfind(opener, pos, stop)  # the block the stop closes is the last one opened
        events.append(("text", text[pos:start]))
        end = stop + len(src.stop)
        body = text[start + len(opener): stop]
        events.append(("code", extract_code(body), text[start:end] if src == dst else None))
        pos = end
        rest = text[pos:]
        if out_open != src.stop:
            stripped = rest.lstrip()
            if not stripped.startswith(out_open):
                continue  # a call without output: the caller decides (tool message, or an error)
            pos += len(rest) - len(stripped) + len(out_open)
        close = text.find(out_close, pos)
        if close < 0:
            raise DataError(f"unbalanced {out_open!r} at {_line_of(text, pos)}: no closing {out_close!r}")
        events.append(("output", text[pos:close].strip("\r\n")))
        pos = close + len(out_close)
    for ev in events:
        if ev[0] == "text":
            _check_stray(ev[1], text, src, out_open, out_close, fence_like)
    return events


def _check_stray(chunk: str, text: str, src: TagStyle, out_open: str, out_close: str, fence_like: bool) -> None:
    if not fence_like and src.stop in chunk:
        at = text.find(chunk) + chunk.find(src.stop)
        raise DataError(f"stray {src.stop!r} at {_line_of(text, at)} (no {_opener(src)!r} before it)")
    if out_open in chunk:
        at = text.find(chunk) + chunk.find(out_open)
        raise DataError(f"{out_open!r} at {_line_of(text, at)} is not preceded by a code block "
                        f"(ending in {src.stop!r})")
    fence = out_close.startswith("```")  # ToRL's ``` also closes every code fence: not checkable
    if not fence and out_close in chunk:
        at = text.find(chunk) + chunk.find(out_close)
        raise DataError(f"stray {out_close!r} at {_line_of(text, at)} (no {out_open!r} before it)")


def _trailing_fence(events: list[tuple]) -> bool:
    """Turn a trailing ```python fence of the last text event into a code event (shape b, inline)."""
    if not events or events[-1][0] != "text":
        return False
    chunk = events[-1][1]
    start = chunk.rfind("```python")
    if start < 0:
        start = chunk.rfind("```py\n")
    if start < 0:
        return False
    tail = chunk[start:].rstrip()
    body = tail.split("\n", 1)[1] if "\n" in tail else ""
    if not body.endswith("```"):
        return False
    events[-1] = ("text", chunk[:start])
    events.append(("code", body[:-3].strip("\n"), None))
    return True


def render_events(events: list[tuple], style: TagStyle) -> list[Segment]:
    """Events -> segments in `style`, adjacent segments of one kind merged; every call must have output."""
    segs: list[Segment] = []

    def add(text: str, trainable: bool) -> None:
        if not text:
            return
        if segs and segs[-1].trainable == trainable:
            segs[-1] = Segment(segs[-1].text + text, trainable)
        else:
            segs.append(Segment(text, trainable))

    for i, ev in enumerate(events):
        kind = ev[0]
        after_output = i > 0 and events[i - 1][0] == "output"
        if kind == "text":
            add(ev[1].lstrip() if after_output else ev[1], True)
        elif kind == "code":
            if i + 1 >= len(events) or events[i + 1][0] != "output":
                raise DataError(f"code call #{sum(e[0] == 'code' for e in events[:i + 1])} has no interpreter "
                                f"output after it")
            if ev[2] is not None:
                add(ev[2], True)
            else:
                if segs and segs[-1].trainable and not segs[-1].text.endswith("\n"):
                    add("\n", True)  # the code block starts on its own line
                add(style.wrap_code(ev[1]), True)
        else:  # output: always right after its code, whose text ends with the stop
            add(style.wrap_output(ev[1]), False)
    if segs and segs[-1].trainable:
        segs[-1] = Segment(segs[-1].text.rstrip(), True)
        if not segs[-1].text:
            segs.pop()
    return segs


# --- rows -> traces ------------------------------------------------------------------------------
def _content(msg: dict[str, Any], n: int) -> str:
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise DataError(f"message {n} ({msg.get('role')}): content must be a string, got {type(content).__name__}")
    return content


def _call_code(call: Any, n: int) -> tuple[str | None, str]:
    """(tool_call_id, code) of one OpenAI-style tool call."""
    if not isinstance(call, dict):
        raise DataError(f"message {n}: tool call is a {type(call).__name__}, expected an object")
    fn = call.get("function", call)
    args = fn.get("arguments") if isinstance(fn, dict) else None
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError:
            parsed = args  # raw code as the argument string
        args = parsed
    code = None
    if isinstance(args, str):
        code = args
    elif isinstance(args, dict):
        code = next((args[k] for k in CODE_ARG_KEYS if isinstance(args.get(k), str)), None)
    if not code or not code.strip():
        raise DataError(f"message {n}: tool call {fn.get('name', '?') if isinstance(fn, dict) else '?'!r} has no "
                        f"code argument (expected one of {', '.join(CODE_ARG_KEYS)})")
    return call.get("id"), code


def _assistant_events(turn: list[tuple[int, dict[str, Any]]], style: TagStyle) -> list[tuple]:
    events: list[tuple] = []
    pending: list[tuple[str | None, str]] = []  # tool calls still waiting for their tool message
    for n, msg in turn:
        role = msg.get("role")
        if role == "assistant":
            if pending:
                raise DataError(f"message {n}: {len(pending)} tool call(s) before it have no tool message")
            text = _content(msg, n)
            try:
                new = parse_events(text, detect_style(text, style), style)
            except DataError as e:
                raise DataError(f"message {n} (assistant): {e}") from None
            if events and events[-1][0] == "text" and new[0][0] == "text":
                # two assistant messages in a row: one continued text
                joint = "\n\n" if events[-1][1].strip() and new[0][1].strip() else ""
                events[-1] = ("text", events[-1][1].rstrip() + joint + new[0][1].lstrip())
                new = new[1:]
            events += new
            pending = [_call_code(c, n) for c in (msg.get("tool_calls") or [])]
        elif role == "tool":
            output = _content(msg, n)
            if pending:
                call_id = msg.get("tool_call_id")
                k = next((i for i, (cid, _) in enumerate(pending) if call_id and cid == call_id), 0)
                events.append(("code", pending.pop(k)[1], None))
            elif not (events and events[-1][0] == "code") and not _trailing_fence(events):
                raise DataError(f"message {n}: tool message without a preceding code call")
            events.append(("output", output.strip("\r\n")))
        elif role in PROMPT_ROLES:
            raise DataError(f"message {n}: {role} message after the assistant turn "
                            "(multi-turn conversations are not supported)")
        else:
            raise DataError(f"message {n}: unknown role {role!r}")
    if pending:
        raise DataError(f"{len(pending)} tool call(s) at the end have no tool message")
    return events


def _prompt_message(msg: Any, n: int) -> dict[str, str]:
    if not isinstance(msg, dict) or "role" not in msg:
        raise DataError(f"message {n} is not an object with a 'role'")
    return {"role": msg["role"], "content": _content(msg, n)}


def _from_messages(messages: Any, name: str) -> tuple[list[dict[str, str]], list[tuple[int, dict[str, Any]]]]:
    """A conversation -> (the messages before the first assistant message, the assistant turn)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"field {name!r} must be a non-empty list of messages")
    first = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), None)
    if first is None:
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise DataError(f"no assistant message (roles: {', '.join(map(str, roles))})")
    prompt = [_prompt_message(m, i) for i, m in enumerate(messages[:first])]
    bad = [m["role"] for m in prompt if m["role"] not in PROMPT_ROLES]
    if bad:
        raise DataError(f"{bad[0]!r} message before the first assistant message")
    return prompt, list(enumerate(messages))[first:]


def _text_prompt(value: Any) -> tuple[list[dict[str, str]], str | None]:
    """A prompt given as text (used verbatim) or as a message list."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], value
    if isinstance(value, list):
        return [_prompt_message(m, i) for i, m in enumerate(value)], None
    raise DataError(f"field 'prompt' must be a string or a message list, got {type(value).__name__}")


def _row_events(row: dict[str, Any], style: TagStyle) -> tuple[list[dict[str, str]], str | None, list[tuple]]:
    """(prompt messages, text prompt or None, events) of a row in any supported shape."""
    key = "response" if "response" in row else "completion"
    if "messages" in row:
        prompt, turn = _from_messages(row["messages"], "messages")
        return prompt, None, _assistant_events(turn, style)
    if "prompt" in row and isinstance(row.get(key), list):  # TRL's conversational prompt-completion
        if not isinstance(row["prompt"], list):
            raise DataError(f"field {key!r} is a message list, so 'prompt' must be one too, "
                            f"got {type(row['prompt']).__name__}")
        prompt, turn = _from_messages(row["prompt"] + row[key], f"prompt + {key}")
        return prompt, None, _assistant_events(turn, style)
    if "prompt" in row and key in row:
        if not isinstance(row[key], str):
            raise DataError(f"field {key!r} must be a string or a message list, got {type(row[key]).__name__}")
        prompt, prompt_text = _text_prompt(row["prompt"])
        return prompt, prompt_text, parse_events(row[key], detect_style(row[key], style), style)
    if "text" in row:  # TRL's language-modeling shape: no prompt, the whole text is trained
        if not isinstance(row["text"], str):
            raise DataError(f"field 'text' must be a string, got {type(row['text']).__name__}")
        return [], "", parse_events(row["text"], detect_style(row["text"], style), style)
    raise DataError(f"no SFT shape fits the fields present ({', '.join(map(str, row)) or 'none'}): give 'messages', "
                    "'prompt' + 'completion' (or 'response'), or 'text' (docs/data-formats.md)")


def trace_from_row(row: dict[str, Any], style: TagStyle, *, id: str, where: str = "") -> Trace:
    """One row of any supported shape -> `Trace` in `style`; `DataError` says what is wrong."""
    prompt, prompt_text, events = _row_events(row, style)
    if prompt_text != "" and not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise DataError("no user message with content before the assistant turn")
    segments = render_events(events, style)
    if not any(s.trainable for s in segments):
        raise DataError("the assistant turn is empty")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        raise DataError(f"field 'answer' must be a string or number, got {type(answer).__name__}")
    text = "".join(s.text for s in segments if s.trainable)
    answer = str(answer) if answer is not None else extract_boxed(text)
    extra = {k: v for k, v in row.items()
             if k not in ("messages", "prompt", "response", "completion", "text", "id", "answer")}
    return Trace(id, prompt, segments, prompt_text, answer, style.name, where, extra)


def load_traces(
    path: str | os.PathLike,
    style: TagStyle | str = "retool",
    *,
    skip_invalid: bool = False,
    limit: int | None = None,
    split: str = "train",
) -> Loaded:
    """SFT traces from a JSONL/JSON/Parquet file or dataset, rendered in `style`.

    Returns a `list[Trace]` whose `.skipped` lists the reasons of rows skipped with `skip_invalid`;
    otherwise the first bad rows are refused with `DataError` (`file:line: reason`).
    """
    style = get_style(style)
    stem = Path(path).stem

    def parse(where: str, index: int, row: dict[str, Any]) -> Trace:
        raw_id = row.get("id")
        tid = str(raw_id) if raw_id is not None else f"{stem}-{index}"
        return trace_from_row(row, style, id=tid, where=where)

    return collect(iter_rows(path, split=split), parse, source=str(path), skip_invalid=skip_invalid, limit=limit)
