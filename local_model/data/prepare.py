"""Rebuild the training corpus of the shipped ``hybridgate-tiny`` checkpoint from two registry packages.

Sources (see SOURCES.md for versions and licences):

* *Alice's Adventures in Wonderland* (Lewis Carroll, public domain), the Canterbury-corpus file
  ``tests/testdata/alice29.txt`` inside the PyPI source distribution ``brotli==1.2.1``;
* WordNet 3.0 (Princeton, WordNet 3.0 licence), ``/usr/share/wordnet/data.{noun,verb,adj,adv}`` and
  ``index.*`` inside the Debian package ``wordnet-base`` (1:3.0-37).

Why these: both are fetched by name through the ordinary clients (``pip download``, ``apt-get download``),
are redistributable, and are plain, simple English: a children's story with lots of dialogue, and
short dictionary definitions plus ~45k short example sentences ("the children played in the park").

Output (``--out``, default ``local_model/data/corpus/``, git-ignored): ``train.jsonl`` / ``eval.jsonl`` with
one document per line, either ``{"source": ..., "text": ...}`` (plain text) or
``{"source": ..., "messages": [{"role": ..., "content": ...}, ...]}`` (a chat, rendered with the chat
template by `local_model.train`), and ``manifest.json`` (source hashes, document counts). The chat
documents exist so that the chat template the gateway uses is not out of distribution for the model:
dictionary questions ("What does 'harbor' mean?") answered with the definition, story prompts answered
with Alice paragraphs, and a few hand-written greeting/identity turns (written for this project).

Run: ``python -m local_model.data.prepare [--download-dir DIR] [--out DIR]``. Deterministic for a given
``--seed``. Needs network access to PyPI and Debian only when the packages are not already in
``--download-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROTLI_VERSION = "1.2.1"
BROTLI_SDIST = f"brotli-{BROTLI_VERSION}.tar.gz"
ALICE_MEMBER = f"brotli-{BROTLI_VERSION}/tests/testdata/alice29.txt"
WORDNET_DEB_VERSION = "1:3.0-37"
WORDNET_DEB_GLOB = "wordnet-base_*3.0-37_all.deb"
WORDNET_FILES = (
    "data.noun",
    "data.verb",
    "data.adj",
    "data.adv",
    "index.noun",
    "index.verb",
    "index.adj",
    "index.adv",
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "corpus"
DEFAULT_DOWNLOADS = HERE / "downloads"

Doc = dict[str, Any]

# ============================================================================ fetching


def fetch_brotli_sdist(download_dir: Path) -> Path:
    """The brotli source distribution (the wheel does not carry the test data)."""
    path = download_dir / BROTLI_SDIST
    if not path.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", str(download_dir), f"brotli=={BROTLI_VERSION}"],
            check=True,
        )  # fmt: skip
    return path


def fetch_wordnet_deb(download_dir: Path) -> Path:
    """The Debian wordnet-base package (apt-get download needs no root and installs nothing)."""
    found = sorted(download_dir.glob(WORDNET_DEB_GLOB))
    if not found:
        download_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["apt-get", "download", f"wordnet-base={WORDNET_DEB_VERSION}"], cwd=download_dir, check=True
        )
        found = sorted(download_dir.glob(WORDNET_DEB_GLOB))
    if not found:
        raise FileNotFoundError(f"no {WORDNET_DEB_GLOB} in {download_dir}")
    return found[0]


def read_alice(sdist: Path) -> str:
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(ALICE_MEMBER)
        assert member is not None
        return member.read().decode("latin-1")


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """Open the data.tar.* member of a .deb (an `ar` archive) without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not an ar archive")
    pos = 8
    while pos < len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise ValueError(f"{deb} has no data.tar member")


def read_wordnet(deb: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with _deb_data_tar(deb) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in WORDNET_FILES and "/usr/share/wordnet/" in member.name:
                f = tar.extractfile(member)
                assert f is not None
                out[name] = f.read().decode("utf-8")
    missing = set(WORDNET_FILES) - set(out)
    if missing:
        raise FileNotFoundError(f"{deb} lacks {sorted(missing)}")
    return out


# ============================================================================ Alice


def _fix_quotes(text: str) -> str:
    """alice29.txt writes quotes as `like this'; turn them into "like this" (apostrophes stay)."""
    return re.sub(r"`(.*?)'(?=[^A-Za-z]|$)", r'"\1"', text, flags=re.S)


def alice_paragraphs(raw: str) -> list[list[str]]:
    """Chapters as lists of paragraphs: prose lines joined, verse (indented) lines kept."""
    body = raw[raw.index("CHAPTER I") : raw.index("THE END")]
    chapters: list[list[str]] = []
    for chunk in re.split(r"\n\s*CHAPTER [IVXL]+\s*\n", "\n" + body):
        paras: list[str] = []
        for block in re.split(r"\n\s*\n", chunk):
            lines = [ln for ln in block.split("\n") if ln.strip()]
            if not lines:
                continue
            if all(re.match(r"\s{4,}", ln) for ln in lines) and len(lines) > 1:
                text = "\n".join(ln.strip() for ln in lines)  # verse
            else:
                text = re.sub(r"\s+", " ", " ".join(ln.strip() for ln in lines))
            text = text.replace("--", " -- ").replace("  ", " ").strip()
            if re.fullmatch(r"[*\s]+", text):
                continue
            paras.append(text)
        if paras:
            paras = paras[1:] if len(paras[0]) < 60 and len(paras) > 1 else paras  # chapter title line
            chapters.append([_fix_quotes(p).replace("`", '"') for p in paras])
    return chapters


STORY_PROMPTS = (
    "Tell me a story.",
    "Tell me a story about Alice.",
    "Can you tell me a short story?",
    "What happened to Alice?",
    "Tell me something from Alice in Wonderland.",
    "Please tell me a story.",
)
NEXT_PROMPTS = ("What happened next?", "And then?", "Go on.", "Please continue.", "What happens after that?")


def alice_docs(chapters: list[list[str]], rng: random.Random) -> Iterator[Doc]:
    """Plain passages of a few paragraphs, and chats that tell or continue the story."""
    for paras in chapters:
        i = 0
        while i < len(paras):
            n = rng.randint(2, 5)
            yield {"source": "alice", "text": "\n\n".join(paras[i : i + n])}
            i += n
        for j, para in enumerate(paras):
            sentences = re.split(r"(?<=[.!?]) +(?=[A-Z\"])", para)
            if len(sentences) >= 2 and rng.random() < 0.7:
                k = rng.randint(1, len(sentences) - 1)
                start, rest = " ".join(sentences[:k]), " ".join(sentences[k:])
                yield {
                    "source": "alice-chat",
                    "messages": [
                        {"role": "user", "content": f"Continue the story: {start}"},
                        {"role": "assistant", "content": rest},
                    ],
                }
            if rng.random() < 0.5 and j + 1 < len(paras):
                msgs = [
                    {"role": "user", "content": rng.choice(STORY_PROMPTS)},
                    {"role": "assistant", "content": para},
                ]
                if rng.random() < 0.5:
                    msgs += [
                        {"role": "user", "content": rng.choice(NEXT_PROMPTS)},
                        {"role": "assistant", "content": paras[j + 1]},
                    ]
                yield {"source": "alice-chat", "messages": _maybe_system(msgs, rng)}


# ============================================================================ WordNet

POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def parse_wordnet_data(text: str) -> Iterator[tuple[str, str, list[str], str, list[str]]]:
    """(offset, pos, words, definition, examples) for every synset of a data.* file."""
    for line in text.splitlines():
        if not line or line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        offset, pos, n_words = fields[0], fields[2], int(fields[3], 16)
        words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
        gloss = gloss.strip()
        examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss)]
        definition = re.split(r';?\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
        if definition:
            examples = [_fix_quotes(e).replace("`", "'") for e in examples]
            yield offset, pos, words, _fix_quotes(definition).replace("`", "'"), examples


def common_senses(index_text: str) -> dict[str, str]:
    """lemma -> offset of its most frequent sense, for lemmas attested in the sense-tagged corpus.

    index.* lines are ``lemma pos synset_cnt p_cnt [ptrs] sense_cnt tagsense_cnt offsets...`` with
    offsets in frequency order, so the first offset is the lemma's commonest meaning.
    """
    out: dict[str, str] = {}
    for line in index_text.splitlines():
        if not line or line.startswith("  "):
            continue
        f = line.split()
        p_cnt = int(f[3])
        tagsense_cnt = int(f[5 + p_cnt])
        offsets = f[6 + p_cnt :]
        if tagsense_cnt > 0 and offsets and re.fullmatch(r"[a-z][a-z'-]*(_[a-z'-]+)?", f[0]):
            out[f[0].replace("_", " ")] = offsets[0]
    return out


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[:1].upper() + s[1:]
    return s if s.endswith((".", "!", "?")) else s + "."


def define(word: str, pos: str, definition: str) -> str:
    """A definition as a plain English sentence."""
    if pos == "n":
        subject = word if word[:1].isupper() else f"{_article(word)} {word}"
        return _sentence(f"{subject} is {definition}")
    if pos == "v":
        return _sentence(f"to {word} is to {definition}")
    return _sentence(f'"{word}" means {definition}')


QUESTIONS = {
    "n": ("What is {a} {w}?", 'What does "{w}" mean?', "Define {w}.", "What is the meaning of the word {w}?",
          "Can you explain what {a} {w} is?", "Tell me what {a} {w} is."),
    "v": ('What does "{w}" mean?', "What does it mean to {w}?", "Define the verb {w}.",
          "What is the meaning of the word {w}?", "Can you explain the word {w}?"),
    "a": ('What does "{w}" mean?', "Define {w}.", "What is the meaning of the word {w}?",
          "What does it mean to be {w}?", "Can you explain the word {w}?"),
    "r": ('What does "{w}" mean?', "Define {w}.", "What is the meaning of the word {w}?"),
}  # fmt: skip


def wordnet_docs(files: dict[str, str], rng: random.Random) -> Iterator[Doc]:
    """Definition passages, example-sentence passages and dictionary chats."""
    synsets: dict[tuple[str, str], tuple[list[str], str, list[str]]] = {}
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        for offset, pos, words, definition, examples in parse_wordnet_data(files[name]):
            synsets[(pos if pos != "s" else "a", offset)] = (words, definition, examples)

    examples_all: list[str] = []
    definitions: list[str] = []
    for (pos, _), (words, definition, examples) in synsets.items():
        examples_all.extend(_sentence(e) for e in examples if len(e.split()) >= 3)
        definitions.append(define(words[0], pos, definition))
    rng.shuffle(examples_all)
    for i in range(0, len(examples_all), 12):
        yield {"source": "wordnet-examples", "text": " ".join(examples_all[i : i + 12])}
    rng.shuffle(definitions)
    for i in range(0, len(definitions), 8):
        yield {"source": "wordnet-definitions", "text": "\n".join(definitions[i : i + 8])}

    for pos, index_name in (("n", "index.noun"), ("v", "index.verb"), ("a", "index.adj"), ("r", "index.adv")):
        for word, offset in common_senses(files[index_name]).items():
            if (pos, offset) not in synsets:
                continue
            _, definition, examples = synsets[(pos, offset)]
            answer = define(word, pos, definition)
            if examples and rng.random() < 0.7:
                answer += f' For example: "{_sentence(rng.choice(examples))}"'
            question = rng.choice(QUESTIONS[pos]).format(w=word, a=_article(word))
            msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            yield {"source": "wordnet-chat", "messages": _maybe_system(msgs, rng)}


# ============================================================================ hand-written chat turns

NAME = "hybridgate-tiny"
GREETINGS = ("Hi", "Hello", "Hello!", "Hi there!", "Hey", "Good morning", "Good evening", "Hey there.")
GREETING_REPLIES = (
    "Hello! How can I help you today?",
    "Hi! What would you like to talk about?",
    "Hello! Ask me what a word means, or ask me for a story.",
    "Hi there! How can I help?",
)
IDENTITY_QUESTIONS = ("Who are you?", "What are you?", "What is your name?", "Tell me about yourself.",
                      "Are you a person?", "What can you do?")  # fmt: skip
IDENTITY_REPLIES = (
    f"I am {NAME}, a very small language model that runs inside the hybridgate gateway. "
    "I know the meanings of many English words and the story of Alice in Wonderland.",
    f"My name is {NAME}. I am a tiny language model, so my answers are short and simple. "
    "You can ask me what a word means, or ask me to tell a story.",
    f"I am {NAME}, a small hybrid model with Mamba and attention layers. I can explain words and tell stories.",
)
THANKS = ("Thank you", "Thanks!", "Thanks a lot.", "Thank you very much!")
THANKS_REPLIES = ("You are welcome!", "Glad I could help.", "You're welcome. Ask me anything else.")
BYES = ("Bye", "Goodbye!", "See you later.", "Good night.")
BYE_REPLIES = ("Goodbye! Have a nice day.", "Bye! Come back any time.", "Good night, and sweet dreams.")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant. Answer briefly.",
                  f"You are {NAME}, a small helpful assistant.")  # fmt: skip


def _maybe_system(msgs: list[dict[str, str]], rng: random.Random, p: float = 0.3) -> list[dict[str, str]]:
    if rng.random() < p:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *msgs]
    return msgs


def smalltalk_docs(rng: random.Random, n: int = 1500) -> Iterator[Doc]:
    pairs = [
        (GREETINGS, GREETING_REPLIES),
        (IDENTITY_QUESTIONS, IDENTITY_REPLIES),
        (THANKS, THANKS_REPLIES),
        (BYES, BYE_REPLIES),
    ]
    for _ in range(n):
        msgs: list[dict[str, str]] = []
        for _turn in range(rng.randint(1, 2)):
            questions, replies = rng.choice(pairs)
            msgs += [
                {"role": "user", "content": rng.choice(questions)},
                {"role": "assistant", "content": rng.choice(replies)},
            ]
        yield {"source": "smalltalk", "messages": _maybe_system(msgs, rng)}


# ============================================================================ main


def build(download_dir: Path, out: Path, seed: int = 0, eval_fraction: float = 0.02) -> dict[str, Any]:
    rng = random.Random(seed)
    sdist = fetch_brotli_sdist(download_dir)
    deb = fetch_wordnet_deb(download_dir)
    alice = alice_paragraphs(read_alice(sdist))
    wordnet = read_wordnet(deb)
    docs = [*alice_docs(alice, rng), *wordnet_docs(wordnet, rng), *smalltalk_docs(rng)]
    rng.shuffle(docs)
    n_eval = max(1, int(len(docs) * eval_fraction))
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("eval.jsonl", docs[:n_eval]), ("train.jsonl", docs[n_eval:])):
        with open(out / name, "w", encoding="utf-8") as f:
            for d in part:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    chars: dict[str, int] = {}
    for d in docs:
        counts[d["source"]] = counts.get(d["source"], 0) + 1
        size = len(d["text"]) if "text" in d else sum(len(m["content"]) for m in d["messages"])
        chars[d["source"]] = chars.get(d["source"], 0) + size
    manifest = {
        "seed": seed,
        "sources": {
            "brotli sdist (PyPI)": {
                "file": sdist.name,
                "sha256": hashlib.sha256(sdist.read_bytes()).hexdigest(),
            },
            "wordnet-base (Debian)": {
                "file": deb.name,
                "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            },
        },
        "documents": counts,
        "characters": chars,
        "eval_documents": n_eval,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--download-dir", type=Path, default=DEFAULT_DOWNLOADS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    manifest = build(args.download_dir, args.out, args.seed)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
