"""runs/<RUN_ID>/report.html: one self-contained page per run that a biologist can open offline.

Everything is read from files earlier stages wrote (no model, no torch): the run's config and
data report, the held-out evaluation, prefix generation, each analysis step's summary.json and
PNGs, and the stage-2 classifier summary. Images are embedded as base64, styles are inline, and
nothing is fetched from a network. A stage that has not run is shown as such, with the command
that runs it.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterator
from pathlib import Path

from codonlm.analysis import STEPS
from codonlm.io import atomic_write, read_json
from codonlm.provenance import unknown_run

STEP_TITLES = {
    "summary": "Summary: held-out evaluation, training curve, data",
    "probe_next_token": "Next-codon predictions against biology",
    "probe_linear": "Linear probes on the residual stream",
    "analyze_embeddings": "Codon embedding geometry",
    "analyze_attention": "Attention heads",
    "analyze_saliency": "Saliency and motifs",
    "analyze_patching": "Activation patching: what carries a premature stop",
}
MODEL_COLUMNS = ("trained", "random_init")
HIDDEN_KEYS = {"step", "status", "seconds", "cpu_seconds", "reading", "reason", "notes", "files"}
GENERATION_COLUMNS = ("temperature", "n", "frac_valid_orf", "frac_hit_cap", "frac_ends_with_stop", "length_ratio_median",
                      "gc3_mean", "cai_mean", "codon_js", "codon_js_floor", "nearest_identity_mean")

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2430;background:#fff}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0 0 4px 0;font-size:1.5em}
header p{margin:2px 0;opacity:.85;font-size:.9em}
nav{background:#eef2f6;padding:8px 28px;border-bottom:1px solid #cfd8e3;font-size:.9em}
nav a{margin-right:14px;color:#1f3b57;text-decoration:none}
main{padding:8px 28px 40px 28px;max-width:1200px}
section{border-bottom:1px solid #e2e8f0;padding:10px 0 18px 0}h2{color:#1f3b57;margin:14px 0 6px 0}
h3{margin:14px 0 6px 0;font-size:1.05em}
.reading{background:#f3f8ee;border-left:4px solid #5a9a3c;padding:8px 12px;margin:8px 0}
.missing{background:#fdf3e7;border-left:4px solid #d48a1c;padding:8px 12px;margin:8px 0}
.failed{background:#fde8e8;border-left:4px solid #c0392b;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;margin:6px 0;font-size:.86em}
th,td{border:1px solid #d5dde6;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0}figure img{max-width:min(100%,1100px);border:1px solid #e2e8f0}
figcaption{font-size:.8em;color:#5b6675}code,pre{font-size:.85em}pre{background:#f6f8fa;padding:8px;overflow-x:auto}
"""


# --------------------------------------------------------------------------- small HTML pieces


def esc(value) -> str:
    return html.escape(str(value))


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        shown = ", ".join(fmt(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    return esc(value)


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{fmt(c)}</td>' if isinstance(c, int | float) and not isinstance(c, bool)
                         else f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(path.name)}</figcaption></figure>")


def note(kind: str, text: str) -> str:
    return f'<p class="{kind}">{text}</p>'


def _flatten(d: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, object]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, str(k)))
        else:
            yield (*prefix, str(k)), v


def key_numbers(summary: dict) -> str:
    """A step's numbers as tables: measures with a 'trained'/'random_init' key anywhere in their path side
    by side (the key becomes a column), then every other number."""
    rows: dict[str, dict[str, object]] = {}
    for path, value in _flatten({k: v for k, v in summary.items() if k not in HIDDEN_KEYS}):
        column = next((p for p in path if p in MODEL_COLUMNS), "value")
        rows.setdefault(" / ".join(p for p in path if p != column), {})[column] = value
    paired = {k: r for k, r in rows.items() if any(c in r for c in MODEL_COLUMNS)}
    other = {k: r for k, r in rows.items() if k not in paired}
    out = ""
    if paired:
        out += table(["measure", "trained", "random init"],
                     [[k, r.get("trained"), r.get("random_init")] for k, r in paired.items()])
    if other:
        out += "<details><summary>more numbers</summary>" if paired else ""
        out += table(["measure", "value"], [[k, r["value"]] for k, r in other.items()])
        out += "</details>" if paired else ""
    return out


# --------------------------------------------------------------------------- sections


def data_table(prepare_report: dict) -> tuple[list[str], list[list]]:
    """One row per genome of pipeline_prepare.json: CDS kept and dropped, genes per split."""
    header = ["genome", "CDS kept", "codons", "CDS dropped", "train genes", "val genes", "test genes"]
    rows = []
    for name, ds in prepare_report.get("datasets", {}).items():
        ex, splits = ds.get("extraction", {}), ds.get("splits", {})
        rows.append([name, ex.get("kept"), ex.get("kept_codons"), ex.get("dropped_total")]
                    + [splits.get(s, {}).get("genes") for s in ("train", "val", "test")])
    return header, rows


def figure_if_any(path: Path) -> str:
    return figure(path) if path.is_file() else ""


def trained_steps(run_dir: Path, train_cfg: dict) -> str:
    """How long the model trained ('900 steps (0.46 of an epoch)'), from the run's train_summary.json;
    the configured epochs when training has not finished (a step budget can end it inside an epoch)."""
    done = read_json(run_dir / "train_summary.json") or {}
    if not done.get("steps_per_epoch"):
        return f"{train_cfg.get('epochs')} epoch(s) planned"
    epochs = done["steps"] / done["steps_per_epoch"]
    return f"{done['steps']:,} steps ({epochs:.2f} {'of an epoch' if epochs < 1 else 'epochs'})"


def config_part(run_dir: Path, record: dict) -> str:
    yaml = record.get("config_yaml")
    if not yaml and (run_dir / "config.yaml").is_file():
        yaml = (run_dir / "config.yaml").read_text()
    if not yaml:
        return "<h3>Config</h3>" + note("missing", "no config found (runs/&lt;RUN_ID&gt;/config.yaml or analysis/run.json)")
    import yaml as pyyaml

    cfg = pyyaml.safe_load(yaml)
    m, t = cfg.get("model", {}), cfg.get("train", {})
    rows = [["model", f"{m.get('n_layer')} layers, {m.get('n_head')} heads, width {m.get('n_embd')}, "
                      f"window {m.get('block_size')} tokens, per-CDS mask {m.get('sep_mask_enabled')}"],
            ["parameters", record.get("n_params")],
            ["genomes", ", ".join(d["name"] for d in cfg.get("data", {}).get("datasets", []))],
            ["training", f"{trained_steps(run_dir, t)}, batch {t.get('batch_size')}, lr {t.get('lr')}, "
                         f"{t.get('optimizer')}"],
            ["checkpoint", f"{record.get('checkpoint', '–')} (sha256 {str(record.get('checkpoint_sha256', '–'))[:16]}…)"]]
    return ("<h3>Config</h3>" + table(["setting", "value"], rows)
            + f"<details><summary>full config</summary><pre>{esc(yaml)}</pre></details>")


def data_part(run_id: str, run_dir: Path) -> str:
    prep = read_json(run_dir / "pipeline_prepare.json")
    if not prep:
        return "<h3>Data</h3>" + note("missing", "not run yet: no pipeline_prepare.json (<code>codonlm prepare "
                                                 f"-c CONFIG --run-id {esc(run_id)}</code>)")
    return (f"<h3>Data</h3><p>{fmt(prep.get('kept_cds'))} CDS kept from {len(prep.get('datasets', {}))} genomes; "
            "genes are split by protein (identical proteins never straddle splits).</p>" + table(*data_table(prep)))


def heldout_part(run_id: str, run_dir: Path) -> str:
    metrics = read_json(run_dir / "evaluate" / "metrics.json")
    head = "<h3>Held-out evaluation (test genes) vs baselines</h3>"
    if not metrics:
        return head + note("missing", f"not run yet: <code>codonlm evaluate {esc(run_id)}</code>")
    model = metrics["model"]
    rows = [["TinyGPT (this run)", model["perplexity"], model["loss"], model.get("top1_accuracy"),
             model.get("aa_accuracy")]]
    if bare := metrics.get("model_without_host"):
        rows.append(["TinyGPT, no host token", bare["perplexity"], bare["loss"], None, None])
    rows += [[f"baseline: {k}", v["perplexity"], v["loss"], None, None] for k, v in metrics["baselines"].items()]
    hosts = metrics.get("host_tokens")
    conditioning = (f" Each gene is read with its genome's host token ({len(hosts)} hosts; model.condition_on_host)"
                    + ("; the row 'no host token' reads the same genes without it, as a gene of an unknown genome "
                       "is read." if bare else ".")
                    if hosts else " No host tokens: the model is not told a gene's genome (README: Host tokens, "
                    "the A/B of both on the default study).")
    return (head + f"<p>{fmt(metrics.get('genes'))} test genes, {fmt(model.get('n_targets'))} predicted codons."
            + esc(conditioning) + "</p>"
            + table(["model", "perplexity", "loss (nats)", "top-1 accuracy", "amino-acid accuracy"], rows)
            + figure_if_any(run_dir / "evaluate" / "per_dataset.png"))


def generation_part(run_id: str, scores_dir: Path) -> str:
    gen = read_json(scores_dir / "gen_prefix" / "summary.json")
    if not gen:
        return "<h3>Prefix generation</h3>" + note("missing", f"not run yet: <code>codonlm generate-prefix "
                                                             f"{esc(run_id)}</code>")
    rows = [[r.get(c) for c in GENERATION_COLUMNS] for r in gen.get("summary", []) if r.get("genome") == "all"]
    settings = gen.get("settings", {})
    return (f"<h3>Prefix generation</h3><p>{fmt(gen.get('n_prompts'))} held-out genes prompted with their first "
            f"{fmt(settings.get('prompt_codons'))} codons; 'real' = the real genes. frac_hit_cap: the share of "
            f"generated genes stopped by the length cap ({fmt(settings.get('length_factor'))}x the real gene, at most "
            f"{fmt(settings.get('max_codons'))} codons) before the model wrote &lt;EOS_CDS&gt;: a gene cut there is "
            "seldom a valid ORF.</p>"
            + table(list(GENERATION_COLUMNS), rows)
            + figure_if_any(scores_dir / "gen_prefix" / "temperature_tradeoff.png"))


def design_part(run_id: str, run_dir: Path) -> str:
    """The design benchmark (runs/<RUN_ID>/design/): per host and method, closeness to the natural genes."""
    bench = read_json(run_dir / "design" / "summary.json")
    head = "<h3>Gene design from held-out proteins</h3>"
    if not bench:
        return head + note("missing", f"not run yet: <code>codonlm design-bench {esc(run_id)}</code>")
    cols = ("codon_identity", "minmax_dtw", "csi_diff", "gc3_diff", "kn3_loglik_per_codon")
    rows = [[r["host"], r["method"], r["n"], *(f"{fmt(r[c])} [{fmt(r[c + '_ci_low'])}, {fmt(r[c + '_ci_high'])}]"
                                              for c in cols)] for r in bench["summary"]]
    missed = [f"{g['host']}: {g['model']} vs {g['baseline']} ("
              + ", ".join(w for w, ok in (("identity not higher", g["identity_higher"]),
                                          ("DTW not lower", g["dtw_lower"])) if not ok) + ")"
              for g in bench["goals"] if not (g["identity_higher"] and g["dtw_lower"])]
    settings = bench.get("settings", {})
    verdict = ("The model is closer to the natural genes than the codon-usage baselines in every host."
               if not missed else "Where the model is <b>not</b> closer than its baseline: " + esc("; ".join(missed)))
    return (head + f"<p>Up to {fmt(settings.get('per_host'))} test proteins per host (at most "
            f"{fmt(settings.get('max_codons'))} codons), designed by each method and compared with the natural gene "
            "(mean [bootstrap 95% CI]). Goal: model greedy beats most-frequent, model sampling beats usage "
            f"sampling, on codon identity (higher) and %MinMax DTW (lower). minmax_dtw is in %MinMax points: the "
            "square root of the summed squared differences of the two profiles (18-codon windows) along the best "
            "warping path (dtaidistance), so it grows with the square root of the gene's length. csi_diff and "
            f"gc3_diff: design minus natural gene. {verdict}</p>"
            + table(["host", "method", "n", *cols], rows) + figure_if_any(run_dir / "design" / "design_bench.png"))


def run_section(run_id: str, run_dir: Path, record: dict, scores_dir: Path) -> str:
    parts = [config_part(run_dir, record), data_part(run_id, run_dir), heldout_part(run_id, run_dir),
             generation_part(run_id, scores_dir), design_part(run_id, run_dir)]
    return '<section id="run"><h2>Run summary</h2>' + "\n".join(parts) + "</section>"


def step_section(run_id: str, run_dir: Path, index: int, step: str) -> str:
    folder = run_dir / "analysis" / step
    title = f"{index}. {STEP_TITLES.get(step, step)}"
    parts = [f'<section id="{esc(step)}"><h2>{esc(title)}</h2><p><code>{esc(step)}</code></p>']
    summary = read_json(folder / "summary.json")
    status = (summary or {}).get("status")
    if summary is None:
        parts.append(note("missing", f"not run yet: <code>codonlm analyze {esc(run_id)} --steps {esc(step)}</code>"))
    elif status != "done":
        kind = "failed" if status == "failed" else "missing"
        parts.append(note(kind, f"{esc(status)}: {esc(summary.get('reason', 'unknown'))}"))
    else:
        parts.append(f'<p class="reading">{esc(summary.get("reading", "(no reading)"))}</p>')
        parts.append(key_numbers(summary))
        for text in summary.get("notes") or []:
            parts.append(note("missing", esc(text)))
        for png in sorted(folder.glob("*.png")):
            parts.append(figure(png))
        csvs = sorted(p.name for p in folder.glob("*.csv"))
        if csvs:
            links = ", ".join(f'<a href="analysis/{esc(step)}/{esc(c)}">{esc(c)}</a>' for c in csvs)
            parts.append(f"<p>Tables: {links} (in runs/{esc(run_id)}/analysis/{esc(step)}/); "
                         f"{fmt(summary.get('seconds'))} s.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def interval(v) -> str:
    """A 95% interval [low, high], or a dash when there is none."""
    return f"[{fmt(v[0])}, {fmt(v[1])}]" if isinstance(v, list | tuple) and len(v) == 2 else "–"


def regression_part(summary: dict, folder: Path) -> list[str]:
    """The regression tasks: every model's out-of-fold Spearman / Pearson / R^2 with intervals, the layer
    sweep, and each task's scatter and metric-by-layer figures."""
    parts = []
    for task, t in (summary.get("regression") or {}).items():
        cv = t.get("cv") or {}
        parts.append(f"<h3>{esc(task)} (regression)</h3><p>{esc(t.get('description', ''))}: {fmt(t.get('n'))} genes, "
                     f"{fmt(cv.get('folds'))}-fold CV grouped by protein x {fmt(cv.get('repeats'))}, out-of-fold "
                     "predictions; zero-shot scores have no fit (no R²). Probes read the layer inner CV chose "
                     f"(refitted model: layer {esc(t.get('final_model_layer'))}).</p>")
        rows = [[m, v.get("spearman"), interval(v.get("spearman_ci")), v.get("pearson"), interval(v.get("pearson_ci")),
                 v.get("r2"), interval(v.get("r2_ci"))] for m, v in (t.get("models") or {}).items()]
        parts.append(table(["model", "Spearman", "95% CI", "Pearson", "95% CI", "R²", "95% CI"], rows))
        if t.get("layers"):
            chosen = t.get("chosen_layers") or {}
            parts.append(table(["layer", "Spearman (ridge probe)", "95% CI", "folds that chose it"],
                               [[k, v.get("spearman"), interval(v.get("spearman_ci")), chosen.get(k, 0)]
                                for k, v in t["layers"].items()]))
        for name in ("scatter.png", "layers.png"):
            parts.append(figure_if_any(folder / task / name))
    return parts


def stage2_section(run_id: str, reports_dir: Path) -> str:
    folder = reports_dir / run_id / "stage2"
    parts = ['<section id="stage2"><h2>Stage 2: sequence-level classifiers and regression</h2>']
    summary = read_json(folder / "summary.json")
    if summary is None:
        parts.append(note("missing", f"not run yet: no {esc(folder / 'summary.json')}"))
        parts.append("</section>")
        return "\n".join(parts)

    metric_header = ["accuracy", "95% CI", "macro F1", "95% CI", "ROC AUC"]

    def metric_row(m: dict) -> list:
        return [m.get("accuracy"), interval(m.get("accuracy_ci")), m.get("macro_f1"), interval(m.get("macro_f1_ci")),
                m.get("roc_auc")]

    for task, t in (summary.get("tasks") or {}).items():
        classes = t.get("classes")
        n_classes = len(classes) if isinstance(classes, list) else classes
        parts.append(f"<h3>{esc(task)}</h3><p>{esc(t.get('description', ''))} (train {fmt(t.get('n_train'))}, "
                     f"test {fmt(t.get('n_test'))}, {fmt(n_classes)} classes)</p>")
        parts.append(table(["model", *metric_header],
                           [[m, *metric_row(v)] for m, v in (t.get("models") or {}).items()]))
    if summary.get("protocols"):
        parts.append("<h3>Protocols (TRTR: real/real, TSTR: synthetic/real, TRTS: real/synthetic)</h3>")
        rows = [[p, m, *metric_row(v)] for p, models in summary["protocols"].items() for m, v in models.items()]
        parts.append(table(["protocol", "model", *metric_header], rows))
    parts += regression_part(summary, folder)
    if summary.get("embedding"):
        parts.append("<h3>Embedding</h3>")
        parts.append(table(["", "value"], [[" / ".join(k), v] for k, v in _flatten(summary["embedding"])]))
    for item in summary.get("skipped") or []:
        parts.append(note("missing", f"skipped: {esc(item)}"))
    for png in sorted(folder.glob("*.png")):
        parts.append(figure(png))
    parts.append("</section>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- the page


def render_report(run_id: str, run_dir: Path, reports_dir: Path) -> str:
    record = read_json(run_dir / "analysis" / "run.json", {})
    scores_dir = Path(record.get("paths", {}).get("scores_dir", Path("outputs/scores") / run_id))
    nav = ['<a href="#run">Run</a>'] + [f'<a href="#{s}">{i}. {esc(s)}</a>' for i, s in enumerate(STEPS, 1)]
    nav.append('<a href="#stage2">Stage 2</a>')
    body = [run_section(run_id, run_dir, record, scores_dir)]
    body += [step_section(run_id, run_dir, i, s) for i, s in enumerate(STEPS, 1)]
    body.append(stage2_section(run_id, reports_dir))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>codonlm report: {esc(run_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header><h1>codonlm report: {esc(run_id)}</h1>
<p>A codon-level language model of prokaryotic genes, and what it learned. Every number is shown beside a
randomly initialised model of the same shape (what the architecture gives for free).</p>
<p>Written {esc(time.strftime('%Y-%m-%d %H:%M'))} from the files in runs/{esc(run_id)}/; self-contained, no
network needed.</p></header>
<nav>{' '.join(nav)}</nav>
<main>
{chr(10).join(body)}
</main></body></html>
"""


def write_report(run_id: str, runs_dir: str | Path = "runs", reports_dir: str | Path = "outputs/reports") -> Path:
    """Render and atomically write runs/<RUN_ID>/report.html; returns its path."""
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / run_id
    if not run_dir.is_dir():
        raise unknown_run(run_id, run_dir, runs_dir)
    path = run_dir / "report.html"
    atomic_write(path, render_report(run_id, run_dir, Path(reports_dir)))
    return path
