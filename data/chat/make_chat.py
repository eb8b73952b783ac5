"""Make the chat fixtures: a chat template for the LM tokenizer and small chat datasets.

tokenizer_config.json: a Hugging Face tokenizer config for data/lm/tokenizer.json
(`PreTrainedTokenizerFast`, bos/eos/pad = `<|bos|>`/`<|eos|>`/`<|pad|>`) whose
`chat_template` is a Zephyr-style template (the turn format of Zephyr and
TinyLlama-1.1B-Chat): `<|bos|>`, then for each message `<|system|>\\n`, `<|user|>\\n` or
`<|assistant|>\\n`, the content, `<|eos|>` and a newline; `add_generation_prompt` appends
`<|assistant|>\\n`; any other role raises. The role markers are plain text (BPE pieces), not
special tokens. Each assistant content and its `<|eos|>` are inside
`{% generation %}...{% endgeneration %}`, so transformers'
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks exactly those tokens
(the newline after `<|eos|>` is outside). Every tag carries whitespace control, so the
output is the same with or without Jinja's `trim_blocks` / `lstrip_blocks`.

Conversations: English prose from the Python reference-manual topics that ship with
CPython (`pydoc_data.topics.topics`, no download), split by topic like data/lm (every 10th
topic, sorted, is held out for validation). Each conversation is about one topic (a
follow-up may switch to another): every other one opens with a system turn, then 1-4
user/assistant exchanges; the user asks to explain the topic, quotes the first sentence of
a paragraph, or asks a follow-up, and the assistant answers with 1-3 of the following
sentences (contents ~20-400 characters). A few contents get leading/trailing spaces or
newlines (some of which make a BPE token straddle the `<|assistant|>\\n` marker and the
content) or non-ASCII text (naïve, →, emoji) on top of the curly quotes and dashes of the
source. Conversations are kept within 512 tokens (the teacher's trained context).
Seeded (random.Random(0)), deterministic.

Files (in this folder):
  tokenizer_config.json
  train.jsonl    150 conversations, one {"messages": [{"role", "content"}, ...]} per line
  train.parquet  the same rows, column `messages`: list<struct<role: string, content: string>>
                 (pyarrow defaults; what Hugging Face `datasets` writes)
  valid.jsonl    30 conversations from the held-out topics
  prompt_completion.jsonl
                 TRL's conversational prompt/completion layout, from the first 60 training
                 conversations: `prompt` = the turns before the last assistant turn,
                 `completion` = [that assistant turn]

Run from the repo root:  python data/chat/make_chat.py
Needs: tokenizers pyarrow (data/requirements-make.txt).
"""
import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
from pydoc_data.topics import topics
from tokenizers import Tokenizer

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
rng = random.Random(0)
N_TRAIN, N_VALID = 150, 30
MAX_TOKENS = 512
MAX_CHARS = 400

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

# The chat template (Jinja). `\n` inside the quoted strings is a Jinja string escape.
CHAT_TEMPLATE = """{{ bos_token }}{% for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- '<|system|>\\n' + message['content'] + eos_token + '\\n' }}
    {%- elif message['role'] == 'user' %}
        {{- '<|user|>\\n' + message['content'] + eos_token + '\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|assistant|>\\n' }}
        {%- generation %}
            {{- message['content'] + eos_token }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- raise_exception('Conversation roles must be system, user or assistant; got: ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\\n' }}
{%- endif %}"""


def render(messages):
    """What CHAT_TEMPLATE renders (without a generation prompt); only used to count tokens."""
    return BOS + "".join(f"<|{m['role']}|>\n{m['content']}{EOS}\n" for m in messages)


SYSTEMS = [
    "You are a helpful assistant who explains the Python language reference.",
    "You are a concise tutor. Answer questions about Python semantics in a few sentences.",
    "You answer questions about Python using the wording of the reference manual.",
    "You are a patient teacher: no question is too naïve. Explain Python step by step.",
    "You are an expert on CPython. Be precise → quote the reference when you can.",
    "Keep answers short and accurate. The user is learning Python 🐍.",
    "You are a friendly assistant. Explain the topic “{title}” from the Python reference.",
    "The user is reading the section “{title}” of the Python language reference. Help them understand it.",
]
ASK_TOPIC = [
    "Explain {title}.",
    "Can you explain {title} in Python?",
    "What should I know about {title}?",
    "I'm confused about {title}. Where do I start?",
    "Give me a short overview of {title}, please.",
]
ASK_QUOTE = [
    "{sentence}",
    "The reference says: “{sentence}” What does that mean?",
    "{sentence} Can you say more?",
    "Is this right? {sentence}",
]
ASK_FOLLOW = [
    "Tell me more.",
    "Go on, please.",
    "Thanks! What else?",
    "And then what happens?",
    "Could you continue?",
]
ASK_SWITCH = [
    "Thanks. Now explain {title}.",
    "OK → what about {title}?",
    "Different question: how does {title} work?",
]


def prose(text):
    """(title, paragraphs as lists of sentences) of one topic: plain prose only."""
    title = text.split("\n", 1)[0].strip()
    paras = []
    for block in text.split("\n\n")[1:]:
        if not block[:1].isupper() or "::=" in block or ">>>" in block or block.startswith("*"):
            continue  # indented code/grammar, lists, examples, the title's underline
        p = " ".join(block.split())
        if not p.endswith(".") or p.startswith(("Note", "See also", "Changed in", "New in", "Deprecated")):
            continue
        sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z“\"(])", p) if len(s) >= 20]
        if len(sentences) >= 2 and all(len(s) <= MAX_CHARS for s in sentences):
            paras.append(sentences)
    return title, paras


def answer(sentences):
    """1-3 of `sentences`, at most MAX_CHARS characters."""
    out = sentences[:rng.choice([1, 2, 2, 3])]
    while len(" ".join(out)) > MAX_CHARS and len(out) > 1:
        out.pop()
    return " ".join(out)


def perturb(content, role):
    """Occasionally add surrounding whitespace or non-ASCII text (exercises offsets)."""
    r = rng.random()
    if r < 0.05:
        content = " " + content
    elif r < 0.09:
        content = content + " "
    elif r < 0.13:
        content = content + "\n"
    elif r < 0.16:
        content = "\n" + content + "\n"
    elif r < 0.19:
        content = "  " + content  # after the marker's "\n": pre-token "\n " straddles the boundary
    elif r < 0.21:
        content = "\n\n" + content  # pre-token "\n\n" straddles the boundary
    r = rng.random()
    if r < 0.04:
        content = content.rstrip() + " 🙂" if role == "assistant" else "Sorry if this is naïve: " + content
    elif r < 0.07:
        content = "→ " + content
    elif r < 0.09:
        content = content.replace(" is ", " is — ", 1)
    return content


def conversation(pool, data, system):
    title, paras = data[rng.choice(pool)]
    order = rng.sample(range(len(paras)), len(paras))
    messages = []
    if system:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS).format(title=title.lower())})
    exchanges = rng.choices([1, 2, 3, 4], weights=[2, 3, 3, 2])[0]
    for turn in range(exchanges):
        if not order or (turn > 0 and rng.random() < 0.15):  # switch topic
            title, paras = data[rng.choice(pool)]
            order = rng.sample(range(len(paras)), len(paras))
            user = rng.choice(ASK_SWITCH).format(title=title.lower())
            sentences = paras[order.pop()]
        else:
            sentences = paras[order.pop()]
            kind = rng.random()
            if turn == 0 and kind < 0.5:
                user = rng.choice(ASK_TOPIC).format(title=title.lower())
            elif turn > 0 and kind < 0.3:
                user = rng.choice(ASK_FOLLOW)
            else:
                user = rng.choice(ASK_QUOTE).format(sentence=sentences[0])
                sentences = sentences[1:]
        messages.append({"role": "user", "content": perturb(user, "user")})
        messages.append({"role": "assistant", "content": perturb(answer(sentences), "assistant")})
    while len(tokenizer.encode(render(messages), add_special_tokens=False).ids) > MAX_TOKENS:
        messages = messages[:-2]  # drop the last exchange
    return {"messages": messages}


tokenizer = Tokenizer.from_file(os.path.join(root, "data/lm/tokenizer.json"))
data = {name: prose(topics[name]) for name in sorted(topics)}
names = [n for n in sorted(topics) if data[n][1]]
valid_names = set(sorted(topics)[::10])
train_pool = [n for n in names if n not in valid_names]
valid_pool = [n for n in names if n in valid_names]

train = [conversation(train_pool, data, system=i % 2 == 0) for i in range(N_TRAIN)]
valid = [conversation(valid_pool, data, system=i % 2 == 0) for i in range(N_VALID)]

config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": BOS,
    "eos_token": EOS,
    "pad_token": PAD,
    "model_max_length": 2048,
    "clean_up_tokenization_spaces": False,
    "chat_template": CHAT_TEMPLATE,
}
with open(os.path.join(here, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
    f.write("\n")
for name, rows in [("train.jsonl", train), ("valid.jsonl", valid)]:
    with open(os.path.join(here, name), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
with open(os.path.join(here, "prompt_completion.jsonl"), "w", encoding="utf-8") as f:
    for row in train[:60]:
        turns = row["messages"]
        last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
        f.write(json.dumps({"prompt": turns[:last], "completion": [turns[last]]}, ensure_ascii=False) + "\n")
message = pa.struct([("role", pa.string()), ("content", pa.string())])
table = pa.Table.from_pylist(train, schema=pa.schema([("messages", pa.list_(message))]))
pq.write_table(table, os.path.join(here, "train.parquet"))

lengths = [len(tokenizer.encode(render(r["messages"]), add_special_tokens=False).ids) for r in train + valid]
contents = [m["content"] for r in train + valid for m in r["messages"]]
print(f"train {len(train)}, valid {len(valid)} conversations; topics {len(train_pool)} + {len(valid_pool)}; "
      f"tokens {min(lengths)}-{max(lengths)}; content chars {min(map(len, contents))}-{max(map(len, contents))}")
