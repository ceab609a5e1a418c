"""Reports as markdown: tables of results and the main job's verdict (docs/design.md §8)."""

from __future__ import annotations

from typing import Any

BACKBONE_NAMES = {"hebbian": "Hebbian", "random": "random init",
                  "ssl": "BYOL (backprop, same wall clock)"}


def _vs_ssl(rows: dict[str, dict[str, Any]], hebbian: dict[str, Any]) -> str:
    """The sentence on the ssl row, when the report has one: its best few-label protocol and
    its mAP against Hebbian's, at the wall clock of the Hebbian pretraining."""
    ssl = rows.get("ssl")
    if not ssl:
        return ""
    sp, ss = max(ssl["fewshot"].items(), key=lambda ps: ps[1]["mean"])
    gap = hebbian["mean"] - ss["mean"]
    how = (f"Hebbian's best is {gap:.2f} points above it" if gap > 0 else
           f"that is {-gap:.2f} points above Hebbian's best")
    return (f" Self-supervised {ssl.get('method', 'ssl').upper()} on the same net for the same "
            f"{ssl.get('budget_s', 0):.0f} s of training ({ssl.get('pretrain_steps', '?')} "
            f"steps) gets {sp} {ss['mean']:.2f} ± {ss['std']:.2f} %; {how} "
            f"(mAP: Hebbian {rows['hebbian']['mAP']:.2f}, {ssl.get('method', 'ssl').upper()} "
            f"{ssl['mAP']:.2f}).")


def verdict(rows: dict[str, dict[str, Any]]) -> str:
    """One sentence: which backbone + protocol wins with few labels, and by how much."""
    def best(variant: str) -> tuple[str, dict[str, Any]]:
        return max(rows[variant]["fewshot"].items(), key=lambda ps: ps[1]["mean"])

    def fmt(s: dict[str, Any]) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    hp, hs = best("hebbian")
    rp, rs = best("random")
    gap = hs["mean"] - rs["mean"]
    scratch = rows["random"]["fewshot"].get("full")
    vs_scratch = (f"; training from scratch (random init + full) gets {fmt(scratch)} "
                  f"({hs['mean'] - scratch['mean']:+.2f})" if scratch else
                  "; training from scratch was not run (add the protocol full)")
    same = rows["random"]["fewshot"].get(hp)
    vs_same = (f"; the same protocol on random init gets {fmt(same)} ({hs['mean'] - same['mean']:+.2f})"
               if same else "")
    head = "With few labels, between Hebbian and random init," if "ssl" in rows else \
        "With few labels"
    if gap > 0:
        return (f"{head} the best is Hebbian + {hp} ({fmt(hs)} %), {gap:.2f} points above "
                f"the best on random init ({rp}, {fmt(rs)} %){vs_same}{vs_scratch}."
                + _vs_ssl(rows, hs))
    return (f"{head} Hebbian pretraining does not pay off here: the best is random init + "
            f"{rp} ({fmt(rs)} %), {-gap:.2f} points above the best Hebbian protocol ({hp}, "
            f"{fmt(hs)} %){vs_scratch}." + _vs_ssl(rows, hs))


VIEW_NAMES = {"none": "the image alone", "h": "the image and its mirror image",
              "hv": "the image and its three flips"}


def _views(rows: dict[str, dict[str, Any]]) -> str:
    """Which views each backbone's descriptor sums, with the held-out kNN that chose them."""
    parts = []
    for name, r in rows.items():
        knn = r.get("views_knn") or {}
        scores = " vs ".join(f"{top1:.2f} {'alone' if v == 'none' else 'summed'}"
                             for v, top1 in knn.items())
        parts += [f"{BACKBONE_NAMES.get(name, name)}: {VIEW_NAMES[r['views']]}"
                  + (f" ({scores})" if knn else "")] if r.get("views") else []
    return "; ".join(parts)


def results_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    k, rk = cfg["knn_k"], cfg["retrieval_k"]
    labels = (f"{cfg['labels_per_class']} labels per class" if cfg["labels_per_class"]
              else f"{cfg['label_fraction']:.0%} of the labels")
    rows = results["rows"]
    protocols = cfg["protocols"]
    n_seeds = len(cfg["seeds"])
    split = results.get("data", {}).get("split")
    data = (f"{split['source']} (split for this run: {split['train']} train / {split['test']} "
            f"test images, {split['test_fraction']:.0%} of every class, seed {split['seed']})"
            if split else cfg["data_root"] or cfg["data"])
    inputs = results.get("inputs")
    model = inputs["model"] if inputs else cfg["model"]
    lines = [f"`hebbret run` on {data} with {model}", ""]
    if inputs:
        lines += ["**Chosen for these images**: " + "; ".join(inputs["reasons"]) + ".", ""]
    if _views(rows):
        lines += [f"**Descriptor views** (kNN top-1 of a held-out fifth of the PCA's sample of "
                  f"training images, when chosen): {_views(rows)}.", ""]
    lines += [f"**Few labels** ({labels}; test top-1 %, mean ± std over {n_seeds} labeled "
              f"subsets; full on random init = training from scratch)", "",
              "| backbone | " + " | ".join(protocols) + " |",
              "|---|" + "---:|" * len(protocols)]
    for name, r in rows.items():
        cells = [f"{r['fewshot'][p]['mean']:.2f} ± {r['fewshot'][p]['std']:.2f}"
                 for p in protocols]
        lines.append(f"| {BACKBONE_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", results["verdict"], "",
              "**All labels** (frozen features; train = database, test = queries)", "",
              f"| backbone | kNN top-1 (k={k}) | linear-probe top-1 | mAP | P@{rk} | Recall@1 | "
              f"pretrain s | embed s | eval s | few-label s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        s = r["seconds"]
        lines.append(f"| {BACKBONE_NAMES.get(name, name)} | {r['knn_top1']:.2f} | "
                     f"{r['linear_top1']:.2f} | {r['mAP']:.2f} | {r[f'P@{rk}']:.2f} | "
                     f"{r['Recall@1']:.2f} | {s.get('pretrain', 0):.0f} | {s.get('embed', 0):.0f} | "
                     f"{s.get('eval', 0):.0f} | {s.get('fewshot', 0):.0f} |")
    conv = rows.get("hebbian", {}).get("convergence")
    if conv and "speed_ratio" in (conv["layers"] or [{}])[0]:
        cells = [f"layer {la['layer']} {la['speed_ratio']:.0%} (≤ {la['converged_below']:.0%}: "
                 f"{'yes' if la['converged'] else 'NO'})" for la in conv["layers"]
                 if la["speed_ratio"] is not None]
        lines += ["", f"**Convergence** of the Hebbian backbone after "
                  f"{rows['hebbian']['pretrain_steps']} steps (how fast each layer still moves over "
                  f"its last fifth of steps, as a share of its peak speed): " + ", ".join(cells)
                  + "."]
    return "\n".join(lines) + "\n"


