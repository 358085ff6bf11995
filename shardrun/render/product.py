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
        tables.append(table)
    return tables
