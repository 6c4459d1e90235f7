"""glue.calibrate: temperature scaling, ECE, reliability diagram."""

import json

import pytest
import torch

from glue.calibrate import calibrate, confidence_stats, fit_temperature

from conftest import SFT_DIR


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
    saved = json.loads((model / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(result["temperature"]) and saved["temperature"] > 0
    assert saved["fitted_on"]["nll"]["after"] <= saved["fitted_on"]["nll"]["before"] + 1e-6
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["figures"]["ece_before"] == pytest.approx(result["measured_on"]["ece_before"])
