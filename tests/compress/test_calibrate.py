"""glue.compress.calibrate: temperature scaling, ECE, reliability diagram."""

import json

import pytest
import torch
from conftest import ROOT, SFT_DIR

from glue.compress.calibrate import (
    calibrate,
    choice_logits,
    confidence_stats,
    fit_temperature,
    load_choice_questions,
    load_model,
)
from glue.core.io import UserError

MMLU = ROOT / "tests" / "fixtures" / "eval" / "mmlu_test.jsonl"


def test_temperature_scaling_fixes_a_planted_overconfident_model():
    # Tokens are drawn from softmax(z); the "model" reports 3 z, i.e. it is overconfident by
    # a factor of 3. The fitted temperature must find the 3 and ECE must fall.
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 40, generator=generator) * 1.5
    targets = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(1)
    overconfident = 3 * z
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = confidence_stats(overconfident, targets, 1.0)
    after = confidence_stats(overconfident, targets, temperature)
    assert after["ece"] < before["ece"] / 3
    assert after["nll"] < before["nll"]
    assert sum(b["count"] for b in after["bins"]) == len(targets)


def test_a_calibrated_model_keeps_temperature_near_one():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 40, generator=generator) * 1.5
    targets = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(1)
    assert fit_temperature(z, targets) == pytest.approx(1.0, rel=0.1)


@pytest.mark.slow
def test_calibrate_writes_temperature_beside_the_model(compressed, tmp_path):
    model, _ = compressed["w4a16_gptq"]
    out = tmp_path / "calibration"
    result = calibrate(model, SFT_DIR / "val.jsonl", out, max_tokens=512, max_seq_length=256)
    saved = json.loads((model / "calibration.json").read_text())["tokens"]
    assert saved["mode"] == "tokens" and saved["temperature"] == pytest.approx(result["temperature"]) and saved["temperature"] > 0
    assert saved["fitted_on"]["nll"]["after"] <= saved["fitted_on"]["nll"]["before"] + 1e-6
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["figures"]["ece_before"] == pytest.approx(result["measured_on"]["ece_before"])


@pytest.mark.slow
def test_choices_mode_scores_answer_letters_and_keeps_the_tokens_fit(compressed, tmp_path):
    model, _ = compressed["w4a16_gptq"]
    questions = load_choice_questions(MMLU)
    logits, targets = choice_logits(*load_model(model), questions, max_seq_length=256)
    assert logits.shape == (len(questions), 4) and targets.tolist() == [q[2] for q in questions]
    assert torch.isfinite(logits).all()

    calibrate(model, SFT_DIR / "val.jsonl", tmp_path / "tokens", max_tokens=256, max_seq_length=256)
    result = calibrate(model, MMLU, tmp_path / "choices", max_seq_length=256, mode="choices")
    assert result["measured_on"]["questions"] + result["fitted_on"]["questions"] == len(questions)
    saved = json.loads((model / "calibration.json").read_text())
    assert sorted(saved) == ["choices", "tokens"] and saved["choices"] == result
    assert (tmp_path / "choices" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("line,message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', r"bad.jsonl:2: a multiple-choice record needs"),
    ('{"question": "q", "choices": "ab", "answer": 0}', r"bad.jsonl:2: a multiple-choice record needs"),
    ('{"question": "q", "choices": ["a", "b", "c"], "answer": 0}', r"the same number of choices \(found \[2, 3\]\)"),
])
def test_bad_multiple_choice_records_name_the_line(tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        load_choice_questions(bad)


def test_unknown_mode_is_refused_before_loading_anything(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="--mode must be one of tokens, choices"):
        calibrate(tmp_path, MMLU, tmp_path / "out", mode="letters")
    assert not (tmp_path / "out").exists()
