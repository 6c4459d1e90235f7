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


def test_held_out_world_cells_before_and_after_with_the_targeted_ones_marked(tmp_path):
    """lm-eval's per-sample logs of the world tasks give each cell's held-out pass rate; the
    cells the clusters target are averaged on their own."""
    def samples(name, passed):
        results = tmp_path / name / "results"
        results.mkdir(parents=True)
        rows = [{"doc": {"cell": cell}, "exact_match": float(ok)} for cell, oks in passed.items() for ok in oks]
        (results / "samples_tiny_world_math_2026.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write(tmp_path / f"{name}_failures", [{"id": "x", "domain": "math", "verdict": "loss"}])

    samples("1a", {"add/hard": [0, 0, 0, 1], "add/easy": [1, 1, 1, 1]})
    samples("1c", {"add/hard": [1, 1, 0, 1], "add/easy": [1, 1, 1, 0]})
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters/clusters.json").write_text(json.dumps({"format": "failure-clusters/v1", "clusters": [
        {"cluster_id": 0, "is_noise": False, "label": {"name": "carries"}, "member_ids": ["x"],
         "world_cell": {"label": "add/hard", "purity": 0.9}}]}))
    result = compare(tmp_path / "1a_failures", tmp_path / "1c_failures", tmp_path / "clusters", 0.05,
                     tmp_path / "1a", tmp_path / "1c")
    cells = {c["cell"]: c for c in result["held_out_cells"]}
    assert cells["add/hard"]["targeted"] and cells["add/hard"]["delta"] == 0.5
    assert not cells["add/easy"]["targeted"] and cells["add/easy"]["delta"] == -0.25
    assert result["targeted_held_out"] == {"before": 0.25, "after": 0.75}
    assert "| add/hard | yes | 25.0% | 75.0% | +50.0 |" in markdown(result)
    # a suite without the world's tasks (the real profile's): no such table, no error
    empty = compare(tmp_path / "1a_failures", tmp_path / "1c_failures", tmp_path / "clusters", 0.05,
                    tmp_path / "clusters", tmp_path / "clusters")
    assert "held_out_cells" not in empty
