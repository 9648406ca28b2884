"""Turns bench/results/*.json into the tables of BENCHMARKS.md (printed as Markdown) and the
plot ``bench/results/large.png`` (median time per size and backend, archiver vs rclone vs the
backend's own upload), and for ``bench.wan`` the WAN tables and ``bench/results/wan.png``.

    python -m bench.report [--large large] [--plot bench/results/large.png] [--wan wan [wan-80ms-1G ...]]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS, size_label


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def large_table(data: dict) -> str:
    targets = data["targets"]["ratio"]
    lines = [
        "| size | backend | rtk-archiver | rclone copyurl | native upload | archiver / rclone | target | archiver peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        a, c, n = r["archiver"], r["rclone"], r["native"]
        ok = "met" if r["ratio_vs_rclone"] <= targets[r["backend"]] else "**missed**"
        lines.append(
            f"| {size_label(r['size'])} | {r['backend']} | {a['median']:.2f} s ({a['mb_per_s']:.0f} MB/s) "
            f"| {c['median']:.2f} s ({c['mb_per_s']:.0f} MB/s) | {n['median']:.2f} s ({n['mb_per_s']:.0f} MB/s) "
            f"| {r['ratio_vs_rclone']:.2f}x | <= {targets[r['backend']]}x, {ok} | {a['max_rss_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    sizes = sorted({r["size"] for r in rows})
    tools = [("archiver", "rtk-archiver", "#2b6cb0"), ("rclone", "rclone copyurl", "#dd6b20"), ("native", "native upload (local file)", "#718096")]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        subset = [r for r in rows if r["size"] == size]
        xs = range(len(subset))
        width = 0.26
        for i, (key, label, color) in enumerate(tools):
            values = [r[key]["median"] for r in subset]
            bars = ax.bar([x + (i - 1) * width for x in xs], values, width, label=label, color=color)
            for bar, r in zip(bars, subset):
                ax.annotate(f"{size / r[key]['median'] / 1e6:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), [r["backend"].upper() for r in subset])
        ax.set_title(f"{size_label(size)} recording (labels: MB/s)")
        ax.set_ylabel("seconds, median (lower is better)")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Archiving one large recording, median of {data['runs']} alternating runs", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot written to {out}")


# -- over an emulated WAN (bench.wan) -----------------------------------------------------------
def load_wan(names: list[str]) -> dict | None:
    """The rows, link checks and invocations of one or more bench.wan results files, merged."""
    merged: dict = {"rows": [], "link_checks": {}, "invocations": [], "runs": set()}
    for name in names:
        data = load(name)
        if not data:
            continue
        merged["rows"] += data["rows"]
        merged["link_checks"].update(data.get("link_checks", {}))
        merged["invocations"].append(f"`{data.get('invocation', 'python -m bench.wan')}` ({data['when']}, "
                                     f"{data.get('elapsed_seconds', 0) / 60:.0f} min, load average at the end "
                                     f"{', '.join(f'{x:.1f}' for x in data.get('load_average', []))}) -> `bench/results/{name}.json`")
        merged["runs"].add(data["runs"])
    return merged if merged["rows"] else None


def wan_tables(data: dict) -> str:
    lines = ["| link | capacity | one TCP stream, direct (up / down) | through bench/wanproxy.py (up / down) |", "|---|---|---|---|"]
    for name, c in data["link_checks"].items():
        lines.append(
            f"| {name} | {c['capacity_mb_per_s']:.1f} MB/s | {c['direct_up_mb_per_s']:.1f} / {c['direct_down_mb_per_s']:.1f} MB/s "
            f"| {c['proxy_up_mb_per_s']:.1f} / {c['proxy_down_mb_per_s']:.1f} MB/s |"
        )
    lines += ["", "| link | size | backend | rtk-archiver | rclone copyurl | native upload | archiver / rclone | archiver peak RSS |",
              "|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, tool: str) -> str:
        if tool not in r:
            return "-"
        t = r[tool]
        return f"{t['median']:.1f} s ({t['mb_per_s']:.1f} MB/s, {100 * t['of_capacity']:.0f}% of link)"

    for r in data["rows"]:
        ratio = r.get("ratio_vs_rclone")
        verdict = "" if ratio is None else (" met" if ratio <= 1.0 else " **missed**")
        rss = r.get("archiver", {}).get("max_rss_mib")
        lines.append(
            f"| {r['link']} | {size_label(r['size'])} | {r['backend']} | {cell(r, 'archiver')} | {cell(r, 'rclone')} "
            f"| {cell(r, 'native')} | {f'{ratio:.2f}x' if ratio else '-'}{verdict} | {f'{rss:.0f} MiB' if rss else '-'} |"
        )
    return "\n".join(lines)


def plot_wan(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    panels = sorted({(r["link"], r["size"]) for r in rows})
    tools = [("archiver", "rtk-archiver", "#2b6cb0"), ("rclone", "rclone copyurl", "#dd6b20"), ("native", "native upload (local file)", "#718096")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    for ax, (link, size) in zip(axes[0], panels):
        subset = [r for r in rows if r["link"] == link and r["size"] == size]
        xs = range(len(subset))
        width = 0.26
        for i, (key, label, color) in enumerate(tools):
            have = [(x, r) for x, r in zip(xs, subset) if key in r]
            if not have:
                continue
            bars = ax.bar([x + (i - 1) * width for x, _ in have], [r[key]["median"] for _, r in have], width, label=label, color=color)
            for bar, (_, r) in zip(bars, have):
                ax.annotate(f"{100 * r[key]['of_capacity']:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ideal = size / (subset[0]["capacity_mb_per_s"] * 1e6)
        ax.axhline(ideal, color="#2f855a", linestyle="--", linewidth=1, label="the link's capacity")
        ax.set_xticks(list(xs), [r["backend"].upper() for r in subset])
        ax.set_title(f"{link}, {size_label(size)} (labels: % of the link)", fontsize=10)
        ax.set_ylabel("seconds, median (lower is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    runs = "/".join(str(n) for n in sorted(data["runs"]))
    fig.suptitle(f"One large recording over an emulated WAN (tc tbf + delaying proxy)\nmedian of {runs} alternating runs", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)
    print(f"plot written to {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", default="large", help="results file of bench.large")
    parser.add_argument("--plot", type=Path, default=RESULTS / "large.png")
    parser.add_argument("--wan", nargs="*", default=["wan"], help="results files of bench.wan (merged)")
    parser.add_argument("--wan-plot", type=Path, default=RESULTS / "wan.png")
    args = parser.parse_args()

    large = load(args.large)
    if large:
        print(f"## Large recordings (median of {large['runs']} runs)\n")
        print(large_table(large))
        print()
        plot(large, args.plot)
    small = load("small")
    if small:
        f, r = small["first"], small["rerun"]
        print(f"\n## {small['count']} recordings of {size_label(small['size'])}\n")
        print("| run | wall time | peak RSS | bytes transferred | target |\n|---|---|---|---|---|")
        print(f"| first | {f['seconds']:.1f} s | {f['max_rss_mib']:.0f} MiB | {f['bytes_transferred']} | < {small['targets']['first_seconds']:.0f} s |")
        print(f"| rerun | {r['seconds']:.1f} s | {r['max_rss_mib']:.0f} MiB | {r['bytes_transferred']} | < {small['targets']['rerun_seconds']:.0f} s, 0 bytes |")
    listing = load("listing")
    if listing:
        print(f"\n## Listing {listing['count']} recordings\n")
        print("| page size | median | runs |\n|---|---|---|")
        for row in listing["runs"]:
            print(f"| {row['page_size']} | {row['median']:.2f} s | {', '.join(f'{t:.2f}' for t in row['seconds'])} |")
    wan = load_wan(args.wan)
    if wan:
        print("\n## Over an emulated WAN\n")
        print(wan_tables(wan))
        print("\nFrom: " + "; ".join(wan["invocations"]))
        plot_wan(wan, args.wan_plot)
    if not (large or small or listing or wan):
        print("no results yet: run `make bench`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
