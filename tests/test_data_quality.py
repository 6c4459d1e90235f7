"""The English filter (tolerant of code and formulas) and the four-component quality score."""

import pytest

from glue.core.io import UserError
from glue.data.quality import (
    LanguageId,
    batch_features,
    check_weights,
    features,
    is_english,
    length_component,
    prose,
    score,
)

WEIGHTS = {"english": 0.3, "coherence": 0.3, "length": 0.2, "complexity": 0.2}
ENGLISH = ("The water cycle is the continuous movement of water on, above and below the surface of the Earth. "
           "The sun heats oceans and lakes, and water evaporates into the air as vapour.")
SPANISH = ("La fotosíntesis es el proceso mediante el cual las plantas verdes utilizan la luz del sol, el agua y el "
           "dióxido de carbono para producir glucosa y liberar oxígeno a la atmósfera.")
GERMAN = "Gehen Sie jeden Tag zur gleichen Zeit ins Bett und vermeiden Sie abends Koffein und Bildschirme."
CODE = "```python\ndef f(x):\n    return x ** 2 + 3 * x\n```"
MATH = "Solve $\\frac{y}{3} + 4 = 10$.\n$y = 18$"


def chat(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.fixture(scope="module", params=["fasttext", "langdetect"])
def language(request):
    return LanguageId(request.param, max_chars=2000)


def feats(messages, language, tokens=200):
    return features(messages, tokens, language, min_prose_chars=40)


def test_prose_drops_code_and_formulas():
    text = prose(f"Here is the function you asked for.\n{CODE}\nIt squares x, as in $x^2$, then adds `3 * x`.")
    assert "def" not in text and "return" not in text and "x^2" not in text and "3 * x" not in text
    assert text.startswith("Here is the function you asked for.")


def test_english_filter(language):
    english = feats(chat("Describe the water cycle.", ENGLISH), language)
    assert english["english_p"] > 0.9 and is_english(english, 0.2, 0.15)
    for foreign in (SPANISH, GERMAN):
        row = feats(chat("?", foreign), language)
        assert row["english_p"] < 0.2 and not is_english(row, 0.2, 0.15), foreign


def test_shouted_english_is_judged_as_english(language):
    # raw fastText gives this text P(en)=0.16 (German first): capitals are lower-cased before judging
    row = feats(chat("WHAT IS THE WATER CYCLE?", ENGLISH.upper()), language)
    assert row["english_p"] > 0.9


def test_english_filter_tolerates_code_and_formulas(language):
    for messages in (chat("Square plus three times x in Python.", CODE), chat("Solve for y.", MATH)):
        row = feats(messages, language)
        assert is_english(row, 0.2, 0.15)


def test_prose_keeps_lines_mostly_of_letters_in_any_script():
    text = prose("Photosynthèse: les plantes vertes utilisent la lumière.\nx = 3.14 * r ** 2 / 7\n"
                 "光合作用是植物利用光能的过程。\n|---|---|\nThe end.")
    assert text == "Photosynthèse: les plantes vertes utilisent la lumière. 光合作用是植物利用光能的过程。 The end."


def test_backends_are_deterministic(language):
    row = chat("Tell me.", ENGLISH)
    assert feats(row, language) == feats(row, language)


def test_score_prefers_a_coherent_answer():
    lang = LanguageId("fasttext", 2000)
    good = feats(chat("Tell me about the ocean.", ENGLISH), lang)
    loop = feats(chat("Tell me about the ocean.", "The ocean is big. " * 12), lang)
    echo = feats(chat("Name a colour please.", "Name a colour please."), lang)
    assert loop["coherence"] < good["coherence"] and echo["coherence"] < good["coherence"]
    assert score(loop, WEIGHTS, 24, 256) < score(good, WEIGHTS, 24, 256)
    assert score(echo, WEIGHTS, 24, 256) < score(good, WEIGHTS, 24, 256)
    for value in (good, loop, echo):
        assert 0 <= score(value, WEIGHTS, 24, 256) <= 1


def test_score_is_the_documented_weighted_sum():
    feat = {"english_p": 0.5, "coherence": 1.0, "complexity": 0.25, "tokens": 75}
    assert score(feat, WEIGHTS, 150, 2048) == pytest.approx(0.3 * 0.5 + 0.3 * 1.0 + 0.2 * 0.5 + 0.2 * 0.25)


def test_length_component():
    assert length_component(75, 150, 2048) == 0.5
    assert length_component(150, 150, 2048) == length_component(2048, 150, 2048) == 1.0
    assert length_component(2049, 150, 2048) == 0.0


def test_weights_must_be_the_four_components_summing_to_one():
    assert check_weights(WEIGHTS, "w") == WEIGHTS
    with pytest.raises(UserError, match="summing to 1"):
        check_weights(WEIGHTS | {"english": 0.5}, "w")
    with pytest.raises(UserError):
        check_weights({"english": 1.0}, "w")


def test_length_is_counted_in_the_profile_tokenizer_with_the_chat_template(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = [chat("Hi.", "Hello."), chat("Describe the water cycle.", ENGLISH)]
    got = batch_features(rows, tokenizer, LanguageId("fasttext", 2000), 40, max_tokens=2048)
    # the training sequence Axolotl builds: the chat template, tokenized with its special tokens
    expected = [len(tokenizer.apply_chat_template(r)["input_ids"]) for r in rows]
    assert [g["tokens"] for g in got] == expected
    assert got[0]["tokens"] < got[1]["tokens"]
    # a row that cannot be trained on is counted and not judged
    short, long = batch_features(rows, tokenizer, LanguageId("fasttext", 2000), 40, max_tokens=expected[0])
    assert short["english_p"] >= 0 and long == {"tokens": expected[1]}
