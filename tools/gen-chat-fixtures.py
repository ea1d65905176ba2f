#!/usr/bin/env python3
"""Regenerates tests/fixtures/chat-templates/: llama.cpp's real chat templates (models/templates in
the pinned llama-cpp-python==0.3.36 source package, MIT), each rendered for a set of
conversations by Python's jinja2 configured as HF transformers' apply_chat_template configures it
(an immutable sandbox with trim_blocks and lstrip_blocks, loop controls, `{% generation %}` blocks,
transformers' own tojson,
raise_exception and strftime_now). `strftime_now` reads a fixed time, so renders are stable.

    tools/gen-chat-fixtures.py [LLAMACPP_SOURCE_DIR]

The source directory defaults to target/llamacpp/src (tools/build-llamacpp unpacks it there). The
output is one JSON file per template: its source and, per case, the conversation, whether a
generation prompt was asked for, and the text or the error.
Needs only jinja2 (pip install jinja2). The tests read the fixtures and need no Python.
"""
import datetime
import json
import pathlib
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCE = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target/llamacpp/src"
OUT = REPO / "tests/fixtures/chat-templates"
BOS, EOS = "<|bos|>", "<|eos|>"
NOW = datetime.datetime(2026, 12, 1, 9, 5, 7)

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    "unicode": [{"role": "user", "content": "Grüße aus Köln — 你好，世界! 🌍 «ok»"}],
    "empty": [{"role": "user", "content": ""}],
    "assistant_last": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ],
}


class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker as rendering sees it: `{% generation %}` blocks render their
    body (transformers also records where, for assistant masks)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return NOW.strftime(fmt)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    templates = sorted((SOURCE / "models/templates").glob("*.jinja"))
    if not templates:
        sys.exit(f"no templates under {SOURCE}/models/templates: run tools/build-llamacpp first")
    OUT.mkdir(parents=True, exist_ok=True)
    env = environment()
    for path in templates:
        source = path.read_text(encoding="utf-8")
        cases = {}
        try:
            template = env.from_string(source)
        except jinja2.TemplateError as e:
            cases = {"compile_error": str(e)}
            template = None
        if template is not None:
            for name, messages in CONVERSATIONS.items():
                for gen in (True, False):
                    key = f"{name}{'' if gen else '_no_generation_prompt'}"
                    case = {"messages": messages, "add_generation_prompt": gen}
                    try:
                        case["text"] = template.render(messages=messages, add_generation_prompt=gen, bos_token=BOS, eos_token=EOS)
                    except Exception as e:  # the template's own raise_exception, or a failed lookup
                        case["error"] = f"{type(e).__name__}: {e}"
                    cases[key] = case
        (OUT / f"{path.stem}.json").write_text(
            json.dumps({"template": source, "bos_token": BOS, "eos_token": EOS, "now": NOW.isoformat(), "cases": cases},
                       ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(templates)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
