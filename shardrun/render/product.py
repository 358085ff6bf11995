"""Tables for `shardrun export`, `upscale` and `evaluate`."""

from __future__ import annotations

from rich.table import Table


def export_view(result) -> Table:
    """Returns a two-column table of what export wrote."""
    d = result.description
    table = Table(title=f"Exported {d['run']} ({d['format']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    v = d.get("validation") or {}
    rows = [("model", str(result.path)), ("described in", str(result.description_path)),
            ("network", f"{d['model']} ×{d['scale']}, {d['channels']} channel(s), input {d['input_kind']}"),
            ("checkpoint", f"step {d['checkpoint']['step']} of {d['checkpoint']['steps_total']}, "
                           f"sha256 {d['checkpoint']['sha256'][:16]}…")]
    if v:
        rows.append(("validation", f"PSNR {v['psnr']:.2f} dB (bicubic {v['bicubic_psnr']:.2f}), "
                                   f"SSIM {v['ssim']:.4f} (bicubic {v['bicubic_ssim']:.4f})"))
    for row in rows:
        table.add_row(*row)
    return table


def evaluate_view(report: dict) -> list[Table]:
    """Returns one table per evaluated run or model: per image, the mean, and published figures."""
    tables = []
    for r in report["results"]:
        step = f", step {r['step']}" if r.get("step") is not None else ""
        table = Table(title=f"{r['label']} on {report['dataset']} ×{r['scale']}{step} (Y, border {r['scale']} shaved)")
        for column in ("image", "PSNR", "SSIM", "bicubic PSNR", "bicubic SSIM"):
            table.add_column(column, justify="left" if column == "image" else "right")
        for row in r["images"]:
            table.add_row(row["image"], f"{row['psnr']:.2f}", f"{row['ssim']:.4f}",
                          f"{row['bicubic_psnr']:.2f}", f"{row['bicubic_ssim']:.4f}")
        table.add_row("[bold]mean[/bold]", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                      f"{r['bicubic_psnr']:.2f}", f"{r['bicubic_ssim']:.4f}", end_section=True)
        for f in r["published"]:
            ssim = "" if f["ssim"] is None else f"{f['ssim']:.4f}"
            table.add_row(f"published {f['model']}", f"{f['psnr']:.2f}", ssim, "", "")
        if r["published"]:
            table.caption = "\n".join(f"published {f['model']}: {f['source']}" for f in r["published"])
            table.caption_justify = "left"
        tables.append(table)
    return tables


_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; border-top: 2px solid #888; }
tr.published td { color: #555; font-style: italic; }
.protocol { color: #555; font-size: 13px; }
"""


def evaluate_html(report: dict) -> str:
    """Returns the evaluation as one self-contained web page: per run or model, each image's
    PSNR/SSIM beside bicubic and the published figures, and its first crops side by side."""
    from html import escape

    from shardrun.render.pictures import CSS as CROPS_CSS, MAX_PICTURE_BYTES, crops_html

    budget = [MAX_PICTURE_BYTES]
    parts = [f"<h1>{escape(report['dataset'])}: {len(report['results'])} evaluated on {report['images']} images</h1>",
             '<p class="protocol">PSNR and SSIM on Y (BT.601) with the scale\'s border shaved; LR by '
             "MATLAB-style bicubic reduction (docs/models-out.md).</p>"]
    for line in report["notices"] + report["skipped"]:
        parts.append(f'<p class="note">{escape(line)}</p>')
    for r in report["results"]:
        step = f", step {r['step']:,}" if r.get("step") is not None else ""
        parts.append(f"<h2>{escape(r['label'])} ×{r['scale']}{step}</h2>")
        rows = ["<tr><th>image</th><th>PSNR</th><th>SSIM</th><th>bicubic PSNR</th><th>bicubic SSIM</th></tr>"]
        for row in r["images"]:
            rows.append(f"<tr><td>{escape(row['image'])}</td><td>{row['psnr']:.2f}</td><td>{row['ssim']:.4f}</td>"
                        f"<td>{row['bicubic_psnr']:.2f}</td><td>{row['bicubic_ssim']:.4f}</td></tr>")
        rows.append(f'<tr class="mean"><td>mean</td><td>{r["psnr"]:.2f}</td><td>{r["ssim"]:.4f}</td>'
                    f'<td>{r["bicubic_psnr"]:.2f}</td><td>{r["bicubic_ssim"]:.4f}</td></tr>')
        for f in r["published"]:
            ssim = "" if f["ssim"] is None else f"{f['ssim']:.4f}"
            rows.append(f'<tr class="published"><td title="{escape(f["source"])}">published {escape(f["model"])}</td>'
                        f"<td>{f['psnr']:.2f}</td><td>{ssim}</td><td></td><td></td></tr>")
        parts.append("<table>" + "".join(rows) + "</table>")
        for line in r["skipped"]:
            parts.append(f'<p class="note">{escape(line)}</p>')
        if r.get("pictures"):
            parts.append(crops_html(r["pictures"]["png"], r["pictures"]["crops"], budget))
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>shardrun evaluate: {escape(report['dataset'])}</title>"
            f"<style>{_PAGE_CSS}{CROPS_CSS}</style></head><body>" + "".join(parts) + "</body></html>")
