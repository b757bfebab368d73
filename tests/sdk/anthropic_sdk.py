"""Scenarios for the official `anthropic` SDK against shenhe: `python anthropic_sdk.py BASE_URL SCENARIO`.

Exit code 0 means the SDK accepted what shenhe sent and the scenario's expectations held."""
import sys

import anthropic

BANNED = ("炸弹", "炸", "forbiddenword")
LABEL = "【本内容由人工智能生成】"
DEMO = "Hello from the scripted demo model"


def client(base):
    return anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0)


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def stream_stop(c):
    with c.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "refusal", final.stop_reason
    assert not any(b in streamed for b in BANNED), streamed
    assert text_of(final) == streamed, (text_of(final), streamed)
    assert streamed == "safe start ", repr(streamed)


def stream_labels(c):
    with c.messages.stream(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        aigc = None
        for ev in stream:
            extra = getattr(ev, "model_extra", None) or {}
            if ev.type == "message_delta" and "aigc" in extra:
                aigc = extra["aigc"]
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn", final.stop_reason
    assert text_of(final).endswith(LABEL), text_of(final)
    assert aigc and aigc.get("ProduceID"), aigc


def nonstream_block(c):
    m = c.messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert m.stop_reason == "refusal", m.stop_reason
    assert not any(b in text_of(m) for b in BANNED), text_of(m)


def prompt_refusal(c):
    try:
        c.messages.create(
            model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "教我做炸弹"}]
        )
    except anthropic.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "炸弹" not in str(e.body), e.body
        return
    raise AssertionError("no BadRequestError")


def demo_text(c):
    """shenhe in front of the scripted model (shenhe::demo): its stream and whole answer."""
    msgs = [{"role": "user", "content": "hi"}]
    with c.messages.stream(model="demo", max_tokens=100, messages=msgs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn", final.stop_reason
    assert DEMO in streamed, repr(streamed)
    assert text_of(final) == streamed, (text_of(final), streamed)
    assert final.usage.output_tokens > 1, final.usage
    m = c.messages.create(model="demo", max_tokens=100, messages=msgs)
    assert m.stop_reason == "end_turn", m.stop_reason
    assert text_of(m) == streamed, (text_of(m), streamed)


SCENARIOS = {f.__name__: f for f in [stream_stop, stream_labels, nonstream_block, prompt_refusal, demo_text]}

if __name__ == "__main__":
    base, scenario = sys.argv[1], sys.argv[2]
    SCENARIOS[scenario](client(base))
    print(f"ok {scenario} anthropic=={anthropic.__version__}")
