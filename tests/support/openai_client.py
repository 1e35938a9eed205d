"""Drives llm-npu serve with the official openai client (run by tests/server.rs):
    python openai_client.py BASE_URL MODEL_ID"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)

assert [m.id for m in client.models.list().data] == [model]

c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
assert c.object == "text_completion" and c.choices[0].text and c.choices[0].finish_reason == "length", c
assert c.usage.completion_tokens == 12 and c.usage.prompt_tokens > 0, c.usage

pieces = [ch.choices[0].text for ch in client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)]
assert "".join(pieces) == c.choices[0].text, (pieces, c.choices[0].text)

# The same prompt again: its prefix comes from the prompt cache.
again = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, temperature=0)
assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1, again.usage

chat = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "Lily"}, {"role": "user", "content": "went to the park."}], max_tokens=10, temperature=0, seed=3)
assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant" and chat.choices[0].message.content, chat

stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tom had a ball."}], max_tokens=10, temperature=0, stream=True)
deltas = list(stream)
assert deltas[0].choices[0].delta.role == "assistant", deltas[0]
assert deltas[-1].choices[0].finish_reason in ("stop", "length"), deltas[-1]
assert "".join(d.choices[0].delta.content or "" for d in deltas), deltas

stopped = client.completions.create(model=model, prompt="Once upon a time", max_tokens=40, temperature=0, stop=["."])
assert stopped.choices[0].finish_reason == "stop" and "." not in stopped.choices[0].text, stopped

try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

print("openai client: all checks passed")
