"""Drives a running `llamart serve` with the official `openai` Python package (and raw HTTP for
what the package cannot send). Run by tests/serve.rs:

    python tests/openai_client.py BASE_URL API_KEY MAX_CONCURRENT

BASE_URL is http://host:port, API_KEY the server's --api-key, MAX_CONCURRENT the sequences it
takes before answering 429 (the plan's --max-seqs plus --max-queue). Exits non-zero at the first
failed check; prints one line a check.
"""

import asyncio
import json
import math
import re
import sys
import threading
import time

import httpx
import openai

BASE, KEY, CAPACITY = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
aclient = openai.AsyncOpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "any"  # the server serves one model whatever the name

def check(name, ok, detail=""):
    if not ok:
        print(f"FAIL: {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok: {name}", flush=True)


def chat_text(stream_parts):
    return "".join(c.choices[0].delta.content or "" for c in stream_parts if c.choices)


ASK = [{"role": "user", "content": "Name three colours of the rainbow."}]

# --- Discovery -------------------------------------------------------------------------------
health = httpx.get(BASE + "/health")
check("/health is 200 when ready", health.status_code == 200, health.text)
models = client.models.list()
check("/v1/models lists the plan's model", len(models.data) == 1 and models.data[0].id, models)

# --- Chat, streamed and not ------------------------------------------------------------------
whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0)
msg = whole.choices[0].message.content
check("chat answers", whole.object == "chat.completion" and len(msg) > 0, whole)
check("chat carries id, created, model and the plan's fingerprint",
      whole.id.startswith("chatcmpl-") and whole.created > 0 and whole.model
      and whole.system_fingerprint.startswith("fp_"), whole)
u = whole.usage
check("usage adds up", u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24
      and u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
check("finish_reason", whole.choices[0].finish_reason in ("stop", "length"), whole.choices[0])

parts = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
check("a chat stream opens with the assistant's role", parts[0].choices[0].delta.role == "assistant", parts[0])
check("a streamed chat says what the whole one says", chat_text(parts) == msg, (chat_text(parts), msg))
check("a stream's last chunk carries the usage", parts[-1].choices == [] and parts[-1].usage.total_tokens == u.total_tokens, parts[-1])
check("a stream ends with its finish_reason", parts[-2].choices[0].finish_reason == whole.choices[0].finish_reason, parts[-2])

as_parts = client.chat.completions.create(
    model=MODEL, max_tokens=24, temperature=0,
    messages=[{"role": "user", "content": [{"type": "text", "text": "Name three colours "},
                                           {"type": "text", "text": "of the rainbow."}]}])
check("content as text parts is the same conversation", as_parts.choices[0].message.content == msg,
      as_parts.choices[0].message.content)

# --- Completions, streamed and not -----------------------------------------------------------
PROMPT = "The capital of France is Paris. The capital of Germany is"
comp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
text = comp.choices[0].text
check("completions answer", comp.object == "text_completion" and len(text) > 0
      and comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 20, comp)
streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stream=True))
check("a streamed completion says what the whole one says", streamed == text, (streamed, text))
ids = httpx.post(BASE + "/v1/completions", headers=AUTH,
                 json={"prompt": [1, 504, 3575, 282], "max_tokens": 4, "temperature": 0}).json()
check("a prompt of token ids", ids["choices"][0]["text"] and ids["usage"]["prompt_tokens"] == 4, ids)

# Emoji take several byte-level tokens each; every chunk still carries whole characters (the
# last may hold U+FFFD when max_tokens cuts a character short).
EMOJI = "1. \U0001F600 2. \U0001F603 3. \U0001F604 4."
whole_u = client.completions.create(model=MODEL, prompt=EMOJI, max_tokens=16, temperature=0).choices[0].text
pieces = [c.choices[0].text for c in client.completions.create(
    model=MODEL, prompt=EMOJI, max_tokens=16, temperature=0, stream=True)]
check("no chunk splits a character", "".join(pieces) == whole_u
      and not any("\ufffd" in p for p in pieces[:-1]) and any(ord(ch) > 0xffff for ch in whole_u),
      (pieces, whole_u))

# --- Stop strings ----------------------------------------------------------------------------
# Stop in the middle of what greedy decoding says: at a string that starts inside one token and
# ends inside another.
cut = len(text) // 2
stop = text[cut:cut + 3]
expect = text[:text.index(stop)]
stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "@@@"])
check("stop text is cut, never shown", stopped.choices[0].text == expect
      and stopped.choices[0].finish_reason == "stop", (stopped.choices[0].text, expect, stop))
streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True))
check("stop text is cut from a stream", streamed == expect, (streamed, expect))

# --- Logprobs --------------------------------------------------------------------------------
lp = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0,
                                    logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check("a logprob per token", len(content) == lp.usage.completion_tokens, len(content))
for e in content:
    tops = [t.logprob for t in e.top_logprobs]
    check_ok = (len(tops) == 3 and tops == sorted(tops, reverse=True) and e.logprob <= 0
                and math.isclose(e.logprob, tops[0], abs_tol=1e-6) and e.top_logprobs[0].token == e.token
                and bytes(e.bytes).decode("utf-8", "replace") == e.token)
    if not check_ok:
        check("greedy tokens are their position's likeliest", False, e)
check("greedy tokens are their position's likeliest, logprobs sorted", True)
probs = sum(math.exp(t.logprob) for t in content[0].top_logprobs)
check("top logprobs are probabilities", 0 < probs <= 1.0 + 1e-5, probs)
clp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
l = clp.choices[0].logprobs
check("completion logprobs", len(l.tokens) == 5 and len(l.token_logprobs) == 5
      and all(len(t) <= 2 for t in l.top_logprobs) and l.text_offset[0] == 0
      and "".join(l.tokens) == clp.choices[0].text, l)

# --- Seeds, n, logit_bias --------------------------------------------------------------------
def sampled(seed, n=1):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24,
                                  temperature=1.0, top_p=1.0, seed=seed, n=n)
    return [c.text for c in sorted(r.choices, key=lambda c: c.index)]
a, b, c = sampled(42), sampled(42), sampled(43)
check("the same seed gives the same text", a == b, (a, b))
check("another seed gives another text", a != c, (a, c))
three = sampled(42, n=3)
check("n choices, the first as with n=1, reproducible", len(three) == 3 and three[0] == a[0]
      and three == sampled(42, n=3) and len(set(three)) > 1, three)
check("logprobs are null unless asked for", comp.choices[0].logprobs is None, comp.choices[0])
def tokenize(text):
    r = httpx.post(BASE + "/tokenize", headers=AUTH, json={"content": text, "add_special": False})
    return r.json()["tokens"]

first = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0).choices[0].text
ids_prompt, ids_full = tokenize(PROMPT), tokenize(PROMPT + first)
check("/tokenize and /detokenize round-trip", httpx.post(BASE + "/detokenize", headers=AUTH, json={
    "tokens": ids_full}).json()["content"] == PROMPT + first and ids_full[:len(ids_prompt)] == ids_prompt,
    (ids_prompt, ids_full))
banned = ids_full[len(ids_prompt)]
other = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0,
                                  logit_bias={str(banned): -100}).choices[0].text
check("logit_bias -100 bans a token", other != first, (other, first))
forced_id = tokenize(" Paris")[0]
forced = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0.8,
                                   logit_bias={str(forced_id): 100}).choices[0].text
check("logit_bias +100 forces a token", forced == " Paris", forced)
echoed = httpx.post(BASE + "/v1/completions", headers=AUTH, json={
    "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "echo": True}).json()["choices"][0]["text"]
check("echo puts the prompt first", echoed == PROMPT + first, echoed)

# --- Structured output ------------------------------------------------------------------------
PLACE = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                          "country": {"enum": ["FR", "DE", "IT"]}},
         "required": ["city", "country"], "additionalProperties": False}
for seed in (1, 2):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Where is Paris? Answer as JSON."}], max_tokens=80,
        temperature=0.7, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE, "strict": True}})
    v = json.loads(r.choices[0].message.content)
    check(f"response_format json_schema (seed {seed})", set(v) == {"city", "country"} and v["country"] in ("FR", "DE", "IT")
          and r.choices[0].finish_reason == "stop", r.choices[0])
r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80, temperature=0.7, seed=5,
                                   response_format={"type": "json_object"})
c = r.choices[0]
# A small model may nest until max_tokens cuts it: then it is an object's beginning.
check("response_format json_object", c.message.content.startswith("{") and
      (c.finish_reason == "length" or isinstance(json.loads(c.message.content), dict)), c)

# --- Errors ----------------------------------------------------------------------------------
def error(status, body=None, raw=None, headers=AUTH, path="/v1/completions", method="POST"):
    r = httpx.request(method, BASE + path, headers=headers, json=body, content=raw, timeout=60)
    ok = r.status_code == status
    try:
        e = r.json()["error"]
        ok = ok and isinstance(e["message"], str) and e["message"] and "type" in e and "param" in e and "code" in e
    except Exception as x:  # noqa: BLE001
        ok, e = False, (r.status_code, r.text[:300], x)
    check(f"{status}: {json.dumps(body)[:60] if body is not None else (raw or b'')[:40]!r}", ok, (r.status_code, r.text[:300]))
    return e

error(400, raw=b"{not json")
error(400, raw=b"")
error(400, raw=b"[1, 2]")
e = error(400, {"prompt": "hi", "temperature": "hot"})
check("a wrong type names its field", e["param"] == "temperature", e)
e = error(400, {"prompt": "hi", "max_tokens": -1})
check("a negative max_tokens names its field", e["param"] == "max_tokens", e)
error(400, {"prompt": "hi", "n": 0})
error(400, {"prompt": "hi", "top_p": 3})
error(400, {"prompt": "hi", "logit_bias": {"abc": 1}})
error(400, {"prompt": [10 ** 8]})
error(400, {"prompt": 5})
error(400, {"prompt": ""})
error(400, {"messages": [{"role": "robot", "content": "x"}]}, path="/v1/chat/completions")
error(400, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
      path="/v1/chat/completions")
error(400, {"messages": []}, path="/v1/chat/completions")
error(400, {"messages": "hi"}, path="/v1/chat/completions")
ctx = models.data[0].model_extra["meta"]["context_tokens"]
e = error(400, {"prompt": "hi there", "max_tokens": ctx})
check("a prompt past the context names both numbers", f"max_tokens {ctx}" in e["message"]
      and re.search(r"prompt of \d+ tokens", e["message"]) and e["code"] == "context_length_exceeded", e)
e = error(400, {"prompt": "word " * (ctx + 10)})
check("a prompt longer than the context says so", str(ctx) in e["message"], e)
error(401, {"prompt": "hi"}, headers={})
error(401, {"prompt": "hi"}, headers={"Authorization": "Bearer wrong"})
try:
    openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0).models.list()
    check("the client sees 401", False)
except openai.AuthenticationError:
    check("the client sees 401 as AuthenticationError", True)
e = error(400, {"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}})
check("an unusable schema names response_format", e["param"] == "response_format" and "schema" in e["message"], e)
error(400, {"prompt": "hi", "response_format": {"type": "xml"}})
error(404, {"prompt": "hi"}, path="/v1/nothing")
error(404, path="/nothing", method="GET")
error(405, path="/v1/completions", method="GET")
error(413, raw=b'{"prompt": "' + b"a" * (9 << 20) + b'"}')
unknown = httpx.post(BASE + "/v1/completions", headers=AUTH, json={
    "prompt": "hi", "max_tokens": 2, "some_future_field": {"x": 1}, "user": "u1"})
check("unknown fields are ignored", unknown.status_code == 200, unknown.text)

# --- Batch invariance: 16 streams at once say what each says alone ----------------------------
PROMPTS = [f"Question {i}: what is {i} plus {i * 3}? Answer:" if i % 2 else
           f"Write a sentence about the number {i} and the colour {['red', 'blue', 'green'][i % 3]}."
           for i in range(16)]

def ask(i):
    return [{"role": "user", "content": PROMPTS[i]}]

alone = [client.chat.completions.create(model=MODEL, messages=ask(i), max_tokens=20, temperature=0)
         .choices[0].message.content for i in range(16)]

async def together():
    async def one(i):
        out = []
        async for chunk in await aclient.chat.completions.create(
                model=MODEL, messages=ask(i), max_tokens=20, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                out.append(chunk.choices[0].delta.content)
        return "".join(out)
    return await asyncio.gather(*(one(i) for i in range(16)))

start = time.time()
concurrent = asyncio.run(together())
for i in range(16):
    check(f"stream {i} of 16 at once says what it says alone", concurrent[i] == alone[i], (concurrent[i], alone[i]))
print(f"16 concurrent streams in {time.time() - start:.1f} s", flush=True)

# --- A full queue: 429 with Retry-After ------------------------------------------------------
def hold(results):
    r = httpx.post(BASE + "/v1/completions", headers=AUTH, timeout=120,
                   json={"prompt": "Count: 1, 2, 3,", "max_tokens": 64, "temperature": 0, "n": CAPACITY})
    results.append(r.status_code)

held = []
t = threading.Thread(target=hold, args=(held,))
t.start()
deadline = time.time() + 30
while time.time() < deadline:
    m = httpx.get(BASE + "/metrics").text
    if "llamart_running_sequences" in m and any(
            line.startswith("llamart_running_sequences ") and float(line.split()[1]) > 0 for line in m.splitlines()):
        break
    time.sleep(0.05)
r = httpx.post(BASE + "/v1/completions", headers=AUTH, json={"prompt": "hi", "max_tokens": 2})
check("a full queue answers 429 with Retry-After", r.status_code == 429 and r.headers.get("retry-after") == "1"
      and r.json()["error"]["type"] == "rate_limit_error", (r.status_code, r.text))
t.join()
check("the request that filled the queue completes", held == [200], held)

# --- A client that goes away frees its sequence's pages ----------------------------------------
def gauge(name, label=None):
    for line in httpx.get(BASE + "/metrics").text.splitlines():
        key = name + ("{" + label + "}" if label else "")
        if line.startswith(key + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} {label}")

with httpx.stream("POST", BASE + "/v1/completions", headers=AUTH, timeout=60,
                  json={"prompt": "Tell me a long story.", "max_tokens": 3000, "stream": True,
                        "temperature": 0.8, "ignore_eos": True}) as s:
    # Keep the iterator: dropping it closes the response.
    lines = s.iter_lines()
    chunks = 0
    while chunks < 3:
        chunks += next(lines).startswith("data: ")
    check("a long stream is running", gauge("llamart_kv_pages", 'state="held"') > 0,
          [x for x in httpx.get(BASE + "/metrics").text.splitlines() if not x.startswith("#")])
deadline = time.time() + 10
while time.time() < deadline and (gauge("llamart_running_sequences") > 0
                                  or gauge("llamart_kv_pages", 'state="held"') > 0):
    time.sleep(0.02)
check("a disconnect frees the sequence and its pages", gauge("llamart_running_sequences") == 0
      and gauge("llamart_kv_pages", 'state="held"') == 0, httpx.get(BASE + "/metrics").text)
metrics = httpx.get(BASE + "/metrics").text
for name in ["llamart_requests_total{outcome=\"cancelled\"}", "llamart_requests_total{outcome=\"stop\"}",
             "llamart_requests_total{outcome=\"length\"}", "llamart_requests_total{outcome=\"rejected\"}",
             "llamart_prompt_tokens_total", "llamart_generated_tokens_total", "llamart_waiting_sequences",
             "llamart_kv_pages{state=\"free\"}", "llamart_time_to_first_token_seconds_bucket",
             "llamart_inter_token_latency_seconds_bucket"]:
    check(f"/metrics has {name}", name in metrics, metrics[:2000])
print("all checks passed", flush=True)
