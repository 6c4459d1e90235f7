"""glue.compress.report: the size/quality table over the tiny model's compressed artefacts."""

import json

import pytest
from conftest import SFT_DIR

from glue.compress.report import report
from glue.core.io import UserError


@pytest.mark.slow
def test_report_table_plot_and_eval_column(compressed, tiny_base, tmp_path):
    artefacts = [compressed["w4a16_gptq"][0], compressed["sparse_2of4"][0]]
    # glue.eval.evaluate's summary.json for two of the three checkpoints: the third shows "-".
    eval_dir = tmp_path / "eval"
    for name, scores in (("base_model", [0.5, 0.3]), ("w4a16_gptq", [0.4, 0.3])):
        (eval_dir / name).mkdir(parents=True)
        rows = [{"task": f"t{i}", "metric": "acc,none", "score": s} for i, s in enumerate(scores)]
        (eval_dir / name / "summary.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "report"
    rows = report(tiny_base, artefacts, SFT_DIR / "val.jsonl", out, samples=10, max_seq_length=256,
                  eval_dir=eval_dir)
    by_name = {r["artefact"]: r for r in rows}
    assert list(by_name) == ["base_model", "w4a16_gptq", "sparse_2of4"]
    assert by_name["base_model"]["ppl_recovery_pct"] == pytest.approx(100)
    assert by_name["w4a16_gptq"]["bits_per_parameter"] < by_name["base_model"]["bits_per_parameter"]
    assert by_name["w4a16_gptq"]["eval_recovery_pct"] == pytest.approx(100 * 0.35 / 0.4)
    assert by_name["sparse_2of4"]["eval_score"] is None
    table = (out / "report.md").read_text()
    assert "| w4a16_gptq |" in table and "| sparse_2of4 |" in table
    assert (out / "size_vs_quality.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rows))


def test_report_refuses_a_folder_that_is_not_a_checkpoint(tiny_base, tmp_path):
    with pytest.raises(UserError, match="neither a checkpoint folder .* nor a GGUF file"):
        report(tiny_base, [tmp_path], SFT_DIR / "val.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
