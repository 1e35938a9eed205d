#!/usr/bin/env python3
"""Reference renderings of real chat templates by transformers' apply_chat_template engine
(transformers 5.23.0 with jinja2 3.1.6, pinned in requirements.txt; no torch needed), for
tests/chat_templates.rs. The templates themselves are read in place from ../shared/models and
never copied here: the fixture names each file and holds only inputs and rendered strings.

strftime_now is pinned to 2024-07-26 14:05:09 (the clock the test gives our renderer too), so
templates that print today's date render the same every day.

    pip install transformers==5.23.0 jinja2==3.1.6 && python tools/oracle/gen_chat_fixtures.py
"""
import datetime as real_datetime
import json
from pathlib import Path

import transformers.utils.chat_template_utils as ctu

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "models"
OUT = ROOT / "tests" / "fixtures" / "chat" / "renders.json"
NOW = real_datetime.datetime(2024, 7, 26, 14, 5, 9)


class FixedClock(real_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


ctu.datetime = FixedClock  # what strftime_now reads

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city, with \"quotes\" & <tags> and ümlauts",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURNS = [
    {"role": "user", "content": "Hello! How are you?"},
    {"role": "assistant", "content": "I'm fine, thanks. How can I help?"},
    {"role": "user", "content": "Write a haiku about the sea.\nKeep it short."},
]
TOOL_TURNS = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 21}"},
]
CASES = [
    ("system_and_turns", [SYSTEM] + TURNS, True, None),
    ("turns_only", TURNS, True, None),
    ("no_generation_prompt", TURNS[:2], False, None),
    ("single_user", TURNS[:1], True, None),
    ("tools", [SYSTEM] + TURNS[:1], True, TOOLS),
    ("tool_call_and_result", TOOL_TURNS, True, TOOLS),
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "date_string": None}


def sources():
    for f in sorted((SHARED / "chat-templates").glob("*.jinja")):
        yield f"chat-templates/{f.name}", f.read_text()
    for f in sorted(SHARED.glob("*/tokenizer_config.json")):
        t = json.loads(f.read_text()).get("chat_template")
        if isinstance(t, str):
            yield f"{f.parent.name}/tokenizer_config.json", t


def main():
    out = []
    for name, template in sources():
        cases = []
        for case, messages, gen, tools in CASES:
            kwargs = {k: v for k, v in SPECIAL.items() if v is not None}
            try:
                rendered, _ = ctu.render_jinja_template(conversations=[messages], chat_template=template, tools=tools,
                                                        add_generation_prompt=gen, **kwargs)
                result = {"text": rendered[0]}
            except Exception as e:  # the template raised (raise_exception) or failed: record its message
                result = {"error": str(e)}
            cases.append({"case": case, "messages": messages, "add_generation_prompt": gen, "tools": tools, **result})
        out.append({"template": name, "cases": cases})
        print(name, sum("text" in c for c in cases), "rendered,", sum("error" in c for c in cases), "errors")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"bos_token": SPECIAL["bos_token"], "eos_token": SPECIAL["eos_token"], "now": NOW.isoformat(),
                               "templates": out}, ensure_ascii=False, indent=1) + "\n")
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
