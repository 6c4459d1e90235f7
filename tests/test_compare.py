"""The 1C before/after table: fixed clusters and regressions beyond the tolerance."""

import json

from glue.eval.compare import compare, markdown


def write(folder, rows):
    folder.mkdir()
    (folder / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cluster_gains_and_domain_regressions(tmp_path):
    before = [{"id": "m1", "domain": "math", "verdict": "loss"}, {"id": "m2", "domain": "math", "verdict": "loss"},
              {"id": "c1", "domain": "code", "verdict": "tie"}, {"id": "c2", "domain": "code", "verdict": "win"}]
    after = [{"id": "m1", "domain": "math", "verdict": "tie"}, {"id": "m2", "domain": "math", "verdict": "loss"},
             {"id": "c1", "domain": "code", "verdict": "loss"}, {"id": "c2", "domain": "code", "verdict": "unparsed"}]
    write(tmp_path / "before", before)
    write(tmp_path / "after", after)
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters/clusters.json").write_text(json.dumps({"format": "failure-clusters/v1", "clusters": [
        {"cluster_id": 0, "label": {"name": "arithmetic"}, "member_ids": ["m1", "m2", "gone"]}]}))
    result = compare(tmp_path / "before", tmp_path / "after", tmp_path / "clusters", tolerance=0.05)
    assert result["clusters"] == [{"cluster_id": 0, "name": "arithmetic", "failures_1a": 3, "passing_now": 1,
                                   "still_failing": 1, "not_judged": 1}]
    domains = {r["domain"]: r for r in result["domains"]}
    assert domains["math"]["delta"] == 0.5 and not domains["math"]["regression"]
    # code: 2 of 2 passed before; after, one loss and one unparsed (not counted as a pass or a judgement)
    assert domains["code"]["after"] == 0.0 and domains["code"]["regression"] and result["regressions"] == ["code"]
    assert "| code | 100.0% | 0.0% | -100.0 | REGRESSION |" in markdown(result)
