"""Phase 3's report (`make modifiers-report`): every trained modifier on every domain, against the
base alone, in one table (domain x model) and a heatmap, with each adapter's size.

Per domain, two figures for the base and for base + each modifier:
- the domain's lm-eval tasks (templates/modifiers.yml `tasks`, with the few-shot, limit and
  metric of the profile's suite), run as `make eval` runs them, the adapter given to lm-eval's
  HF model as `peft=`;
- the held-out answer loss: mean negative log-likelihood per answer token on the domain's rows of
  the curated validation split (which the modifier's data never draws from), all models on one
  loaded base with the modifier switched per model (glue/modifiers/hotswap.py). It moves where
  a task score is at its ceiling.
The off-diagonal cells are what a wrong routing decision costs.

Sizes: each trained adapter's bytes on disk against its rank, in MB and in bits per base
parameter; and the real profile's modifiers computed from their configs (rank x layers x the
module shapes of Llama-3.1-8B), labelled as computed.

Writes <out>/report.md, report.json, heatmap.png, manifest.json, results/<model>/ (lm-eval's
files as it wrote them) and heldout/<domain>.jsonl (the rows the loss is measured on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from glue.core.checkpoints import finished_run
from glue.core.io import UserError, atomic_path, iter_jsonl, load_yaml, run_cli, write_jsonl_atomic, write_text_atomic
from glue.core.manifest import write_manifest
from glue.core.modifiers import CONFIG, load_modifiers, rendered_config
from glue.core.paths import ROOT, load_profile
from glue.core.records import answer_loss, answer_tokens
from glue.eval.evaluate import load_suite, run_suite
from glue.modifiers.hotswap import BASE, ModifierSet, base_problems

# The LoRA targets of `lora_target_linear: true` on a Llama: every linear layer of every block.
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# meta-llama/Llama-3.1-8B-Instruct's config.json: the shapes the real profile's sizes are computed from.
LLAMA_31_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "num_hidden_layers": 32, "vocab_size": 128256, "tie_word_embeddings": False}
# PEFT keeps LoRA weights in fp32 over a bf16 base (`autocast_adapter_dtype`, which Axolotl leaves
# on) and saves them so: 4 bytes a parameter in the real profile's adapter files.
REAL_ADAPTER_BYTES_PER_PARAMETER = 4
MB = 1e6


# ---- sizes ----------------------------------------------------------------------------------

def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of a Llama block, from its config.json."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def lora_parameters(config: dict, rank: int, targets=LINEAR) -> int:
    """A LoRA adapter's parameters: A (rank x in) and B (out x rank) per target, in every block."""
    shapes = linear_shapes(config)
    return config["num_hidden_layers"] * rank * sum(sum(shapes[t]) for t in targets)


def base_parameters(config: dict) -> int:
    """A Llama's parameters: embeddings, every block's linear layers and two norms, the final norm, the head."""
    hidden = config["hidden_size"]
    block = sum(i * o for i, o in linear_shapes(config).values()) + 2 * hidden
    embeddings = config["vocab_size"] * hidden
    head = 0 if config.get("tie_word_embeddings") else embeddings
    return embeddings + config["num_hidden_layers"] * block + hidden + head


def size_row(name: str, rank: int, alpha, parameters: int, size_bytes: int, base_params: int, how: str) -> dict:
    return {"modifier": name, "rank": rank, "lora_alpha": alpha, "parameters": parameters,
            "size_mb": round(size_bytes / MB, 3), "bits_per_base_parameter": size_bytes * 8 / base_params,
            "how": how}


def measured_sizes(adapters: dict[str, Path], base_config: dict) -> list[dict]:
    """Each adapter file as it is on disk."""
    from safetensors import safe_open

    rows = []
    for name, adapter_dir in adapters.items():
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = adapter_dir / "adapter_model.safetensors"
        with safe_open(str(weights), framework="pt") as fh:
            parameters = sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())
        rows.append(size_row(name, config["r"], config["lora_alpha"], parameters, weights.stat().st_size,
                             base_parameters(base_config), f"measured: {weights.name} on disk"))
    return rows


def computed_real_sizes(config_dir: Path = ROOT / "axolotl_configs" / "real") -> list[dict]:
    """The real profile's modifiers, computed from their rendered configs and Llama-3.1-8B's shapes."""
    rows = []
    for path in sorted(config_dir.glob("3_modifier_*.yml")):
        cfg = load_yaml(path)
        if not cfg.get("lora_target_linear"):
            raise UserError(f"{path}: sizes are computed for lora_target_linear: true (every linear layer); "
                            "extend glue/modifiers/report.py for other targets")
        parameters = lora_parameters(LLAMA_31_8B, cfg["lora_r"])
        rows.append(size_row(path.stem.removeprefix("3_modifier_"), cfg["lora_r"], cfg["lora_alpha"], parameters,
                             parameters * REAL_ADAPTER_BYTES_PER_PARAMETER, base_parameters(LLAMA_31_8B),
                             f"computed from {path.relative_to(ROOT)}: rank x 32 layers x Llama-3.1-8B's "
                             f"module shapes, fp32"))
    return rows


# ---- scores -----------------------------------------------------------------------------

def trained_modifiers(profile: str, config: dict) -> tuple[Path, dict[str, Path]]:
    """The base every trained modifier of the profile shares, and each modifier's adapter folder."""
    adapters, bases = {}, {}
    for domain in config["domains"]:
        cfg = load_yaml(rendered_config(profile, domain))
        if finished_run(cfg["output_dir"]):
            adapters[domain] = Path(cfg["output_dir"])
            bases[domain] = str(cfg["base_model"])
    if not adapters:
        raise UserError(f"no trained modifier for profile {profile} (none of the 3_modifier_*.yml output_dir folders "
                        f"holds adapter_model.safetensors): run `make modifiers PROFILE={profile}` first")
    if len(set(bases.values())) > 1:
        raise UserError(f"the modifiers were configured over different bases ({bases}); one report compares "
                        "modifiers of one base: set one base_model in templates/modifiers.yml and `make render`")
    return Path(next(iter(bases.values()))), adapters


def domain_suite(suite_path: Path, tasks: list[str]) -> dict:
    """The profile's suite cut down to `tasks`, each with the suite's few-shot, limit and metric."""
    listed = load_yaml(suite_path)
    listed = {e.get("task") for e in listed.get("tasks") or [] if isinstance(e, dict)} if isinstance(listed, dict) else set()
    if missing := [t for t in tasks if t not in listed]:  # before lm-eval's task index, which takes a while to build
        raise UserError(f"{CONFIG}: task(s) {', '.join(missing)} are not in {suite_path}, which gives every "
                        "task its few-shot, limit and metric: add them there, or name a suite that has them")
    suite = load_suite(suite_path)
    entries = {entry["task"]: entry for entry in suite["tasks"]}
    return {**suite, "tasks": [entries[t] for t in tasks]}


def task_scores(base: Path, adapters: dict[str, Path], suite: dict, results: Path, allow_code: bool) -> dict:
    """{model: {task: score}} for the base and base + each modifier."""
    scores = {}
    for name in [BASE, *adapters]:
        model_args = dict(suite.get("model") or {})
        if name != BASE:
            model_args["peft"] = str(adapters[name].resolve())
        rows = run_suite(base, {**suite, "model": model_args}, results / name, allow_code)
        scores[name] = {row["task"]: row["score"] for row in rows}
    return scores


def heldout_losses(modifiers: ModifierSet, heldout: dict[str, Path | None], max_len: int, limit: int,
                   batch_size: int) -> dict:
    """{domain: {model: mean answer-token NLL}} over each domain's held-out rows ({} for a domain
    without any)."""
    losses = {}
    for domain, path in heldout.items():
        losses[domain] = {}
        scored = answer_tokens(path, modifiers.tokenizer, limit, 0, max_len) if path else []
        for name in modifiers.names if scored else []:
            with modifiers.switched(name) as model:
                losses[domain][name] = answer_loss(model, scored, f"held-out {domain}, {name}", batch_size)[0]
    return losses


def table(domains: list[str], models: list[str], cells: dict, digits: int) -> list[str]:
    """A markdown table, domains down and models across, each modifier's cell with its difference
    from the base, and its own domain in bold."""
    lines = ["| domain | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for domain in domains:
        row, base = [], cells[domain].get(BASE)
        for model in models:
            value = cells[domain].get(model)
            text = "-" if value is None else f"{value:.{digits}f}"
            if value is not None and base is not None and model != BASE:
                text += f" ({value - base:+.{digits}f})"
            row.append(f"**{text}**" if model == domain else text)
        lines.append(f"| {domain} | " + " | ".join(row) + " |")
    return lines


def own_domain(scores: dict, losses: dict, modifiers: list[str]) -> list[dict]:
    """Each modifier on its own domain against the base: the report's verdict rows."""
    rows = []
    for name in modifiers:
        score, loss = scores.get(name) or {}, losses.get(name) or {}
        rows.append({"modifier": name, "base_score": score.get(BASE), "score": score.get(name),
                     "base_loss": loss.get(BASE), "loss": loss.get(name),
                     "beats_base_on_score": None if score.get(name) is None or score.get(BASE) is None
                     else score[name] > score[BASE],
                     "beats_base_on_loss": None if not loss else loss[name] < loss[BASE]})
    return rows


def markdown(doc: dict) -> str:
    models, domains = doc["models"], doc["domains"]
    lines = ["# Domain modifiers", "",
             f"- base: `{doc['base']}`; modifiers: {', '.join(f'`{m}`' for m in models[1:])}",
             f"- tasks: lm-eval, with the few-shot, limit and metric of `{doc['suite']}`; "
             + "; ".join(f"{d}: {', '.join(t) or 'none'}" for d, t in doc["tasks"].items()),
             f"- held-out answer loss: mean negative log-likelihood per answer token on the domain's rows of "
             f"`{doc['heldout_split']}` (at most {doc['heldout_limit']} rows a domain; lower is better)", "",
             "![task score and held-out loss, domain x model](heatmap.png)", "",
             "## Task score (domain x model; in brackets: against the base; bold: the modifier's own domain)", ""]
    lines += table(domains, models, doc["scores"], 3)
    lines += ["", "## Held-out answer loss (nats per answer token)", ""]
    lines += table(domains, models, doc["losses"], 4)
    lines += ["", "## Each modifier on its own domain", "",
              "| modifier | base score | modifier score | base loss | modifier loss | beats the base |", "|---|---:|---:|---:|---:|---|"]
    for r in doc["own_domain"]:
        verdicts = [f"on {k}" for k, v in (("score", r["beats_base_on_score"]), ("loss", r["beats_base_on_loss"])) if v]
        f = lambda v, p: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"| {r['modifier']} | {f(r['base_score'], 3)} | {f(r['score'], 3)} | {f(r['base_loss'], 4)} "
                     f"| {f(r['loss'], 4)} | {', '.join(verdicts) or 'no'} |")
    lines += ["", "## Adapter sizes", "",
              f"Bits per base parameter: the adapter's bytes x 8 / the base's parameters "
              f"({doc['base_parameters']:,} here; {base_parameters(LLAMA_31_8B):,} for Llama-3.1-8B).", "",
              "| modifier | rank | lora_alpha | parameters | MB | bits / base parameter | how |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in doc["sizes"] + doc["sizes_real_computed"]:
        lines.append(f"| {r['modifier']} | {r['rank']} | {r['lora_alpha']} | {r['parameters']:,} | {r['size_mb']:.3f} "
                     f"| {r['bits_per_base_parameter']:.4f} | {r['how']} |")
    return "\n".join(lines) + "\n"


def heatmap(doc: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, domains = doc["models"], doc["domains"]
    panels = [("task score (higher is better)", doc["scores"], "viridis", "{:.3f}"),
              ("held-out answer loss, nats/token (lower is better)", doc["losses"], "viridis_r", "{:.3f}")]
    fig, axes = plt.subplots(1, 2, figsize=(5 + 2.4 * len(models), 1.2 + 0.7 * len(domains)))
    for ax, (title, cells, cmap, fmt) in zip(axes, panels):
        grid = np.array([[np.nan if (cells.get(d) or {}).get(m) is None else cells[d][m] for m in models]
                         for d in domains], dtype=float)
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.set_yticks(range(len(domains)), domains)
        ax.set_xlabel("model (base, or base + modifier)")
        ax.set_title(title, fontsize=10)
        for i, domain in enumerate(domains):
            for j, model in enumerate(models):
                text = "-" if np.isnan(grid[i, j]) else fmt.format(grid[i, j])
                own = model == domain  # a label on a box, so that it reads on dark and light cells alike
                ax.text(j, i, text, ha="center", va="center", fontsize=8, fontweight="bold" if own else "normal",
                        color="white" if own else "black",
                        bbox={"facecolor": "black" if own else "white", "alpha": 0.7, "pad": 1.5, "linewidth": 0})
    fig.suptitle("Domain modifiers: each domain (rows) with the base alone and each modifier (columns)", fontsize=10)
    fig.tight_layout()
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def report(profile: str, suite_path: Path, out: Path, heldout_limit: int = 200, heldout_batch: int = 8,
           allow_code: bool = False, overwrite: bool = False) -> dict:
    started = time.time()
    if allow_code and os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise UserError("--allow-code-exec also needs HF_ALLOW_CODE_EVAL=1 in the environment "
                        "(both say yes to running model-written code)")
    config = load_modifiers(profile)
    base, adapters = trained_modifiers(profile, config)
    problems = [p for path in adapters.values() for p in base_problems(path, base)]
    if problems:
        raise UserError("refusing to report on modifiers over another base:\n  " + "\n  ".join(problems))
    tasks = {d: spec["tasks"] for d, spec in config["domains"].items() if spec["tasks"] or d in adapters}
    domains = list(tasks)
    suite = domain_suite(suite_path, [t for d in domains for t in tasks[d]])
    val_split = Path(load_profile(profile)["data_dir"]) / "val.jsonl"
    models = [BASE, *adapters]
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        raw = task_scores(base, adapters, suite, tmp / "results", allow_code)
        scores = {}
        for domain in domains:
            per_model = {}
            for model in models:
                got = [raw[model][t] for t in tasks[domain] if raw[model].get(t) is not None]
                per_model[model] = sum(got) / len(got) if got else None
            scores[domain] = per_model
        val_rows, heldout = list(iter_jsonl(val_split)), {}
        for domain in domains:
            rows = [r for r in val_rows if r.get("domain") in config["domains"][domain]["data"]]
            heldout[domain] = tmp / "heldout" / f"{domain}.jsonl" if rows else None
            if rows:
                write_jsonl_atomic(heldout[domain], rows)
        model_args = suite.get("model") or {}
        switcher = ModifierSet(base, adapters, model_args.get("dtype", "float32"), model_args.get("device", "cpu"))
        losses = heldout_losses(switcher, heldout, int(load_profile(profile)["sequence_len"]), heldout_limit,
                                heldout_batch)
        base_config = json.loads((base / "config.json").read_text())
        doc = {"profile": profile, "base": str(base), "suite": str(suite_path), "models": models, "domains": domains,
               "tasks": tasks, "heldout_split": str(val_split), "heldout_limit": heldout_limit,
               "scores": scores, "losses": losses, "task_scores": raw,
               "own_domain": own_domain(scores, losses, list(adapters)),
               "base_parameters": base_parameters(base_config),
               "sizes": measured_sizes(adapters, base_config), "sizes_real_computed": computed_real_sizes()}
        write_text_atomic(tmp / "report.json", json.dumps(doc, indent=2) + "\n")
        write_text_atomic(tmp / "report.md", markdown(doc))
        heatmap(doc, tmp / "heatmap.png")
        write_manifest(tmp, "3_modifiers_report",
                       {"base": base, **{f"modifier:{m}": p / "adapter_model.safetensors" for m, p in adapters.items()},
                        "suite": suite_path, "heldout": val_split, "modifiers_config": CONFIG},
                       {"profile": profile, "heldout_limit": heldout_limit, "allow_code_exec": allow_code, "tasks": tasks},
                       {"own_domain": doc["own_domain"]}, started)
    return doc


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.modifiers.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--suite", type=Path, help="the suite whose task settings are used (default: eval_configs/suites/<profile>_1a.yml)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. work/<profile>/modifiers/report")
    parser.add_argument("--heldout-limit", type=int, default=200, help="held-out rows per domain for the answer loss")
    parser.add_argument("--heldout-batch", type=int, default=8,
                        help="held-out rows scored at once (padded; a batch's logits take batch x length x vocabulary floats)")
    parser.add_argument("--allow-code-exec", action="store_true",
                        help="run tasks that execute model-written code (also needs HF_ALLOW_CODE_EVAL=1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    suite = args.suite or ROOT / "eval_configs" / "suites" / f"{args.profile}_1a.yml"
    report(args.profile, suite, args.out, args.heldout_limit, args.heldout_batch, args.allow_code_exec, args.overwrite)
    print((args.out / "report.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_cli(main)
