"""Scenarios for the official `openai` SDK against shenhe: `python openai_sdk.py BASE_URL SCENARIO`.

Exit code 0 means the SDK accepted what shenhe sent and the scenario's expectations held."""
import sys

import openai

BANNED = ("炸弹", "炸", "forbiddenword")
LABEL = "【本内容由人工智能生成】"
DEMO = "Hello from the scripted demo model"


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)


def chat_stream_stop(c):
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    content, finish = "", None
    for chunk in stream:
        for ch in chunk.choices:
            if ch.delta and ch.delta.content:
                content += ch.delta.content
            if ch.finish_reason:
                finish = ch.finish_reason
    assert finish == "content_filter", finish
    assert not any(b in content for b in BANNED), content
    assert content == "你好，", repr(content)


def chat_stream_labels(c):
    stream = c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    content, aigc = "", None
    for chunk in stream:
        for ch in chunk.choices:
            if ch.delta and ch.delta.content:
                content += ch.delta.content
        extra = getattr(chunk, "model_extra", None) or {}
        if "aigc" in extra:
            aigc = extra["aigc"]
    assert content.endswith(LABEL), repr(content)
    assert aigc and aigc.get("ProduceID"), aigc


def chat_nonstream_block(c):
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    ch = r.choices[0]
    assert ch.finish_reason == "content_filter", ch.finish_reason
    assert not any(b in (ch.message.content or "") for b in BANNED), ch.message.content


def chat_prompt_refusal(c):
    try:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "教我做炸弹"}])
    except openai.BadRequestError as e:
        assert e.code == "content_filter", e.code
        assert "炸弹" not in str(e.body), e.body
        return
    raise AssertionError("no BadRequestError")


def responses_stream_stop(c):
    events = []
    text = ""
    with c.responses.create(model="m", input="hi", stream=True) as stream:
        for ev in stream:
            events.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            if ev.type == "response.incomplete":
                assert ev.response.status == "incomplete", ev.response.status
                assert ev.response.incomplete_details.reason == "content_filter"
    assert events[-1] == "response.incomplete", events
    assert text == "safe start ", repr(text)
    assert not any(b in text for b in BANNED), text
    # The helper stream accumulates the same events without complaint.
    with c.responses.stream(model="m", input="hi") as stream:
        last = None
        for ev in stream:
            last = ev
        assert last.type == "response.incomplete", last.type
        assert last.response.output[0].content[0].text == "safe start "


def responses_stream_labels(c):
    label = "\n【本内容由人工智能生成】"
    text = ""
    with c.responses.create(model="m", input="hi", stream=True) as stream:
        for ev in stream:
            if ev.type == "response.output_text.delta":
                text += ev.delta
    assert text.endswith(label), repr(text)
    # The helper stream accumulates the label deltas and the unknown `aigc` field without complaint.
    with c.responses.stream(model="m", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text.endswith(label), repr(final.output_text)
    extra = getattr(final, "model_extra", None) or {}
    assert "aigc" in extra and extra["aigc"]["Label"] == "1", extra


def responses_prompt_refusal(c):
    try:
        c.responses.create(model="m", input="教我做炸弹")
    except openai.BadRequestError as e:
        assert e.code == "content_filter", e.code
        return
    raise AssertionError("no BadRequestError")


def demo_text(c):
    """shenhe in front of the scripted model (shenhe::demo): chat and Responses, streamed and whole."""
    msgs = [{"role": "user", "content": "hi"}]
    content = "".join(
        ch.delta.content or ""
        for chunk in c.chat.completions.create(model="demo", messages=msgs, stream=True)
        for ch in chunk.choices
    )
    assert DEMO in content, repr(content)
    r = c.chat.completions.create(model="demo", messages=msgs)
    assert r.choices[0].message.content == content, r.choices[0].message.content
    text = ""
    with c.responses.stream(model="demo", input="hi") as stream:
        for ev in stream:
            if ev.type == "response.output_text.delta":
                text += ev.delta
        final = stream.get_final_response()
    assert final.status == "completed", final.status
    assert text == content, (text, content)
    assert final.output_text == text, (final.output_text, text)
    r = c.responses.create(model="demo", input="hi")
    assert r.status == "completed", r.status
    assert r.output_text == text, (r.output_text, text)
    assert r.usage.output_tokens > 1, r.usage


SCENARIOS = {f.__name__: f for f in [
    chat_stream_stop, chat_stream_labels, chat_nonstream_block, chat_prompt_refusal,
    responses_stream_stop, responses_stream_labels, responses_prompt_refusal, demo_text,
]}

if __name__ == "__main__":
    base, scenario = sys.argv[1], sys.argv[2]
    SCENARIOS[scenario](client(base))
    print(f"ok {scenario} openai=={openai.__version__}")
