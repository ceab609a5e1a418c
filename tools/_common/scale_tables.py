"""The docs/results.md tables of tools/bench_scale.py, rendered from its results JSON."""

from __future__ import annotations

from typing import Any

from _common.results import markdown_table


def render(doc: dict[str, Any]) -> str:
    st = doc.get("stages", {}).get("scale", {})
    out = []
    if "pretrain" in st:
        p = st["pretrain"]
        rows = [[f"{r['processes']} × {r['threads_per_process']} thread(s)", r["global_batch"],
                 r["steps"], r["in_steps_s"], r["steps_per_s"], r["wall_s"]]
                for r in p["rows"].values()]
        out += ["**Data-parallel pretraining** (`hebb_softhebb_c3`, gloo on this 2-core CPU; "
                "steps/s inside the steps)", "",
                markdown_table(["processes", "global batch", "steps", "in steps (s)", "steps/s",
                                "wall (s)"], rows, digits=3),
                f"Parallel efficiency (2 processes vs 2 × one 1-thread process): "
                f"{p['parallel_efficiency']:.2f}; 2 processes vs 1 process with every thread: "
                f"{p['speedup_2p_vs_1p_all_threads']:.2f}× (`{p['command']}`, {p['git_commit']}, "
                f"{p['machine']}).", ""]
    if "index" in st:
        ix = st["index"]
        b, s = ix["build"], ix["search"]
        rows = [[nprobe, r["qps"], r["recall_at_10"]] for nprobe, r in s["by_nprobe"].items()]
        out += [f"**{ix['n']:,} × {ix['dim']} on-disk index** (`{ix['factory']}`, built with "
                f"`--on-disk`; vectors: {ix['vectors']}; raw float32 {ix['raw_float32_mib']:.0f} "
                f"MiB)", "",
                markdown_table(["measurement", "value"], [
                    ["build wall (s)", b["build_s"]],
                    ["build peak RSS (MiB; includes the embeddings' pages read through the "
                     "memory map)", b["memory_mib"]["VmHWM"]],
                    ["build RSS at the end: anonymous / file-backed (MiB)",
                     f"{b['memory_mib'].get('RssAnon')} / {b['memory_mib'].get('RssFile')}"],
                    ["size on disk (MiB)", b["size_on_disk_mib"]],
                    ["search process: RSS before opening the index (MiB; Python, torch, FAISS)",
                     s["memory_before_index_mib"]["VmRSS"]],
                    ["… of which anonymous / file-backed (MiB)",
                     f"{s['memory_before_index_mib'].get('RssAnon')} / "
                     f"{s['memory_before_index_mib'].get('RssFile')}"],
                    ["search process: peak RSS (MiB)", s["memory_mib"]["VmHWM"]],
                    ["search: (peak − before) / raw vectors", ix["search_index_rss_over_raw"]],
                    ["search: peak / raw vectors", ix["search_peak_rss_over_raw"]],
                    ["search RSS at the end: anonymous / file-backed (MiB)",
                     f"{s['memory_mib'].get('RssAnon')} / {s['memory_mib'].get('RssFile')}"]]),
                markdown_table(["nprobe", "queries/s", "recall@10 vs exact"], rows, digits=3),
                f"(`{ix['command']}`, {ix['git_commit']}, {ix['machine']}.)", ""]
    return "\n".join(out)
