"""One readable page per run: training, metrics, figures and latent analysis.

``build_report`` runs what is missing (evaluation on the held-out split, figures, latent
analysis) into the report folder, then writes ``report.md`` (images linked) and
``report.html`` (one self-contained file, images embedded) from the same blocks.
"""

import base64
import csv
import html
import json
import logging
from pathlib import Path

import numpy as np

from sdnet_infer.io import DataError, write_text

log = logging.getLogger("sdnet_tf.report")

CAPTIONS = {
    "learning_curves": "Learning curves: validation Dice per epoch and the supervised step's losses.",
    "segmentation": "Segmentation of held-out images (RV red, MYO green, LV blue), prediction and reference.",
    "anatomy_channels": "The binary anatomy factor s, one panel per channel.",
    "reconstructions": "Reconstructions from the image's anatomy with its own z, a random z ~ N(0, I) and z = 0.",
    "z_traversal": "z traversal (paper Figure 8): one dimension per row over [-3, 3], the others at the "
                   "image's posterior mean; per-pixel correlation with the dimension's value, and the "
                   "difference between the last and first step.",
    "swaps": "Anatomy and modality swaps between two images (paper Figure 6).",
    "anatomy_arithmetic": "Anatomy arithmetic (paper Figure 7): a channel moved, two swapped, all shuffled, one "
                          "removed, decoded with the image's own z.",
    "z_capacity": "Mean posterior variance of each z dimension (paper Section 5.6); 1 is the prior's.",
    "z_embedding": "The two z dimensions of smallest posterior variance, by label.",
}


def _fmt(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mean_std(stats, digits=3, scale=1.0):
    if not stats or stats.get("mean") is None:
        return "n/a"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def learning_curves_figure(history_path):
    """Validation Dice and the supervised losses per epoch from ``history.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise DataError(f"{history_path}: no epochs recorded")
    epochs = [int(r["epoch"]) for r in rows]

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    left.plot(epochs, column("val_dice"), marker=".", color="tab:blue")
    left.set_title("validation Dice (soft, pooled)", fontsize=9)
    left.set_xlabel("epoch", fontsize=8)
    for name, label in (("supervised/dice", "Dice loss"), ("supervised/reconstruction", "L1 reconstruction"),
                        ("unsupervised/adversarial", "adversarial (G)"), ("discriminator/discriminator", "D")):
        for column_name in (f"train_{name}", name):  # runs of earlier versions had no train_ prefix
            if column_name in rows[0]:
                right.plot(epochs, column(column_name), label=label)
                break
    right.set_title("training losses (epoch means)", fontsize=9)
    right.set_xlabel("epoch", fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _evaluation_blocks(summary):
    blocks = [("h2", "Segmentation metrics")]
    run = summary.get("run", {})
    if run:
        blocks.append(("p", f"{summary['cases']} volumes of {summary['patients']} patients "
                             f"({run.get('subset')} patients of split {run.get('split')}), scored on their original "
                             "grid with the header's voxel size. Mean ± standard deviation over volumes."))
    phases = [p for p in ("ED", "ES") if p in next(iter(summary["per_class"].values()))]
    header = ["class", "phase", "Dice (3-D)", "HD (mm)", "HD95 (mm)", "ASSD (mm)", "volume error (ml)",
              "per-slice Dice"]
    rows = []
    for cls, groups in summary["per_class"].items():
        for phase in phases + ["all"]:
            g = groups[phase]
            rows.append([cls, phase, _mean_std(g["Dice"]), _mean_std(g["HD"], 1), _mean_std(g["HD95"], 1),
                         _mean_std(g["ASSD"], 2), _mean_std(g["Err"], 1), _mean_std(g["SliceDice"])])
    blocks.append(("table", header, rows))
    paper = summary["paper_slice_dice"]
    blocks.append(("p", "The SDNet paper's figure (per-slice Dice averaged over each patient's ED and ES slices, "
                        f"then over patients): pooled foreground {_mean_std(paper['SliceDice'])}; "
                        + ", ".join(f"{c} {_mean_std(paper[f'SliceDice {c}'])}" for c in ("LV", "RV", "MYO"))
                        + f". Mean 3-D Dice over the three classes: {_mean_std(summary['dice_mean_3d'])}."))
    validity = summary["validity_percent"]
    blocks.append(("p", f"Anatomically valid slices ({summary['scored_slices']} slices with any foreground): "
                        f"prediction {_fmt(validity['Valid7 pred'], 1)}% by the 7 checks, "
                        f"{_fmt(validity['ValidP pred'], 1)}% by the full Painchaud set; reference "
                        f"{_fmt(validity['Valid7 ref'], 1)}% by the 7 checks."))
    if summary.get("clinical"):
        header = ["index", "n", "correlation", "bias", "limits of agreement", "MAE"]
        rows = [[name, _fmt(a["n"]), _fmt(a["correlation"]), _fmt(a["bias"], 1),
                 f"{_fmt(a['loa_low'], 1)} to {_fmt(a['loa_high'], 1)}", _fmt(a["mae"], 1)]
                for name, a in summary["clinical"].items()]
        blocks += [("h3", "Clinical indices (prediction against reference)"),
                   ("p", "Volumes in ml, ejection fractions in %, myocardial mass in g (1.05 g/ml)."),
                   ("table", header, rows)]
    if summary.get("errors"):
        blocks.append(("p", "Not scored: " + "; ".join(summary["errors"])))
    return blocks


def _latent_blocks(latent, folder):
    c = latent["classifier"]
    used = latent["capacity"]["dimensions_used"]
    blocks = [("h2", "What z holds"),
              ("p", f"{used} of {latent['nz']} z dimensions have a mean posterior variance below 0.5 over "
                    f"{latent['images']} images. A logistic regression predicts the {c['label']} from z with "
                    f"{100 * c['accuracy']:.1f}% accuracy on held-out patients ({c['test_images']} images; "
                    f"always guessing the commonest training label: {100 * c['chance']:.1f}%).")]
    for name in ("z_capacity", "z_embedding"):
        if (folder / f"{name}.png").is_file():
            blocks.append(("img", folder / f"{name}.png", CAPTIONS[name]))
    return blocks


def _run_blocks(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    data = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").is_file() else {}
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    m, t = config["model"], config["train"]
    rows = [["data", f"{data.get('data', config['data'].get('path'))} (split {data.get('split')}, "
                     f"{100 * config['data']['labelled_fraction']:g}% labelled)"],
            ["images", ", ".join(f"{data[k]} {k}" for k in ("labelled", "unlabelled", "validation") if k in data)
             or "n/a"],
            ["network", f"{m['input_size']}x{m['input_size']}, U-Net {m['unet_filters']} filters, "
                        f"{m['anatomy_channels']} anatomy channels, nz {m['nz']}"],
            ["training", f"{summary.get('iteration', 'n/a')} iterations of batch {t['batch_size']}, "
                         f"best validation Dice {_fmt(summary.get('best_val_dice'), 4)}, "
                         f"kept weights: {summary.get('weights', 'n/a')}"]]
    return [("h2", "Run"), ("table", ["", ""], rows)]


def build_report(run_dir, out_dir, data=None, images=None, refresh=False):
    """Assemble a run's report in ``out_dir``; returns the paths of ``report.md`` and ``report.html``.

    Evaluation (``evaluation/``), figures (``figures/``) and latent analysis (``latent/``) are
    computed when their results are missing or ``refresh`` is set, and reused otherwise.
    """
    from sdnet_tf.apps.evaluation import evaluate_run
    from sdnet_tf.apps.figures import make_figures, save_figure
    from sdnet_tf.apps.latent import analyse_run
    from sdnet_tf.inference import refuse_precursor, run_cohort, run_description

    from sdnet_infer.io import prepare_output_dir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not an sdnet-tf run directory (no config.yaml)")
    refuse_precursor(run_dir, "report")
    # the evaluation and the latent analysis read ACDC-layout cohorts by split: any other run
    # (M&Ms, MM-WHS) or a cohort that is gone is refused before a file is written
    if run_description(run_dir).get("dataset") == "mnms":
        raise DataError(f"{run_dir}: trained on M&Ms data; report takes runs of ACDC-layout cohorts; evaluate --run "
                        "scores this one per vendor, and figures draws it with -i IMAGE.nii.gz (3-D frames)")
    run_cohort(run_dir, data)
    prepare_output_dir(out_dir)  # an unwritable folder fails before the evaluation runs
    blocks = [("h1", f"SDNet run {run_dir.name}")] + _run_blocks(run_dir)
    if (run_dir / "history.csv").is_file():
        path = save_figure(learning_curves_figure(run_dir / "history.csv"), out_dir / "learning_curves.png")
        blocks.append(("img", path, CAPTIONS["learning_curves"]))
    evaluation = out_dir / "evaluation" / "summary.json"
    if refresh or not evaluation.is_file():
        log.info("evaluating %s on its test patients", run_dir)
        evaluate_run(run_dir, out_dir / "evaluation", data=data)
    blocks += _evaluation_blocks(json.loads(evaluation.read_text()))
    blocks.append(("p", "Tables: evaluation/acdc_metrics.csv (challenge layout), cases.csv, slices.csv, "
                        "clinical.csv, summary.json."))
    figures = out_dir / "figures"
    if refresh or not any(figures.glob("*.png")):
        make_figures(run_dir, figures, images=images)
    blocks.append(("h2", "Figures"))
    for name in ("segmentation", "anatomy_channels", "reconstructions", "swaps", "anatomy_arithmetic", "z_traversal"):
        if (figures / f"{name}.png").is_file():
            blocks.append(("img", figures / f"{name}.png", CAPTIONS[name]))
    latent = out_dir / "latent" / "latent.json"
    if refresh or not latent.is_file():
        analyse_run(run_dir, out_dir / "latent", data=data)
    blocks += _latent_blocks(json.loads(latent.read_text()), out_dir / "latent")
    blocks += [("h2", "Reproduce"),
               ("code", f"sdnet-tf report {run_dir} -o {out_dir}" + (" --refresh" if refresh else ""))]
    md = write_text(out_dir / "report.md", render_markdown(blocks, out_dir))
    page = write_text(out_dir / "report.html", render_html(blocks, f"SDNet run {run_dir.name}"))
    return md, page


def render_markdown(blocks, base):
    lines = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "code":
            lines += ["```", block[1], "```", ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            path, caption = Path(block[1]), block[2]
            lines += [f"![{caption}]({path.relative_to(base).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def render_html(blocks, title):
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:90%}img{max-width:100%}figcaption{font-size:85%;color:#555}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
