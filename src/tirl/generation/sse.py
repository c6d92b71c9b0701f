"""Server-sent events for `tirl serve`'s `stream: true`: the chunks OpenAI's streaming API sends.

    chunks = stream_chunks(choices, chat=True, model="tiny", usage=None)
    return await send_events(request, chunks)          # data: {...}\\n\\n ... data: [DONE]\\n\\n

Completions stream `text_completion` chunks (`choices[i].text`), chat completions
`chat.completion.chunk` chunks (`choices[i].delta`: the role first, then the content); each choice
ends with a chunk carrying its `finish_reason`; `stream_options.include_usage` adds a last chunk with
`usage` and no choices; `data: [DONE]` closes the stream, as OpenAI's does.

Simplification: the server generates a batch of whole sequences, so the events go out once a
request's generation has finished, each choice's text in one content chunk; a client reads a
stream, but sees no tokens before the last one is sampled. Not covered: per-token chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web


def stream_chunks(choices: list[dict[str, Any]], *, chat: bool, model: str,
                  usage: dict[str, int] | None) -> list[dict[str, Any]]:
    """The chunks of one response, from its finished choices (`CompletionServer._choice`'s dicts)."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model}
    out = []
    for c in choices:
        i = c["index"]
        if chat:
            out.append({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
            out.append({**head, "choices": [{"index": i, "delta": {"content": c["text"]}, "logprobs": c["logprobs"],
                                             "finish_reason": None}]})
            out.append({**head, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                             "finish_reason": c["finish_reason"]}]})
        else:
            out.append({**head, "choices": [{"index": i, "text": c["text"], "logprobs": c["logprobs"],
                                             "finish_reason": None, "stop_reason": None}]})
            out.append({**head, "choices": [{"index": i, "text": "", "logprobs": None,
                                             "finish_reason": c["finish_reason"], "stop_reason": c["stop_reason"]}]})
    if usage is not None:
        out.append({**head, "choices": [], "usage": usage})
    return out


async def send_events(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    """Write `chunks` as server-sent events (`data: <json>`), then `data: [DONE]`."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
