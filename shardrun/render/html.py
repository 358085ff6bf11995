"""`shardrun status --html FILE`: the status object as one self-contained web page.

Everything is inline — CSS in a <style> element, plots as inline SVG drawn by matplotlib (Agg,
text kept as text so the numbers on the axes can be searched and read by a screen reader) — so
the page opens offline, can be mailed or put on the team's Drive, and makes no request at all.

Plots: training loss and validation PSNR per run (against bicubic), a collaborative run's global
model's validation PSNR per round (only when the job has one), progress over time,
throughput by hardware on a log2 axis beside the source paper's measurements (as the paper's
Figure 2 compares its machines), storage per account, and the lengths of the sessions so far.
"""

from __future__ import annotations

import html
import io
import re
from datetime import datetime, timedelta, timezone

from shardrun.units import human_bytes, human_duration, iso_time
from shardrun.render.status import (collaborative_summary, compute_label, dropped_note, replica_state, run_eta,
                                    run_validation, straggler_text, training_left, worker_state, worker_work)

MAX_RUN_CARDS = 4  # runs that get cards of their own at the top of the page
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232a;
       background: #f5f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: #5b6573; margin-bottom: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 12px 16px; min-width: 170px; }
.card .k { color: #5b6573; font-size: 13px; } .card .v { font-size: 22px; font-weight: 600; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: 14px; }
th, td { border: 1px solid #dde1e6; padding: 5px 8px; text-align: right; }
th { background: #eef1f4; } td.l, th.l { text-align: left; }
.stale { color: #b42318; font-weight: 600; } .ok { color: #1a7f37; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; margin: 0; padding: 8px; }
figure svg { width: 100%; height: auto; } figcaption { color: #5b6573; font-size: 13px; padding: 4px 8px; }
.note { background: #fff8e1; border: 1px solid #f0d48a; border-radius: 6px; padding: 6px 10px; margin: 6px 0; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None else format(value, fmt) + suffix


# -- plots ------------------------------------------------------------------------------------


def _svg(fig) -> str:
    """Returns the figure as an inline <svg> element: no XML prolog, no DOCTYPE, no fixed size."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)
    return text


def _figure(title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#5b6573")
    ax.set_xticks([])
    ax.set_yticks([])


def _loss_plot(status: dict) -> str:
    fig, ax = _figure("Training loss (mean per step bucket)")
    drawn = False
    for i, run in enumerate(status["runs"]):
        points = [(h["step"], h["loss"]) for h in run["history"] if h["loss"] is not None]
        if points:
            ax.plot(*zip(*points), color=PALETTE[i % len(PALETTE)], label=run["name"], linewidth=1.4)
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (MSE)")
        ax.legend(fontsize=9)
    else:
        _empty(ax, "no loss reported yet")
    return _svg(fig)


def _psnr_lines(ax, series, marker: str) -> bool:
    """Draws each run's PSNR (solid) and bicubic's (dashed) against x; `series` holds, per run,
    its name and its (x, psnr, bicubic) points; returns whether anything was drawn."""
    drawn = False
    for i, (name, points) in enumerate(series):
        if points:
            xs, psnr, bicubic = zip(*points)
            colour = PALETTE[i % len(PALETTE)]
            ax.plot(xs, psnr, color=colour, label=name, linewidth=1.4, marker=marker if len(xs) < 40 else None)
            ax.plot(xs, bicubic, color=colour, linestyle="--", linewidth=1, alpha=0.7)
            drawn = True
    return drawn


def _psnr_plot(status: dict) -> str:
    fig, ax = _figure("Validation PSNR on luma (dashed: bicubic)")
    series = [(run["name"], [(h["step"], h["psnr"], h["bicubic_psnr"]) for h in run["history"] if h["psnr"] is not None])
              for run in status["runs"]]
    if _psnr_lines(ax, series, "."):
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.legend(fontsize=9)
    else:
        _empty(ax, "no validation yet")
    return _svg(fig)


def collaborative_runs(status: dict) -> list[dict]:
    return [r for r in status["runs"] if r.get("collaborative")]


def _rounds_plot(status: dict) -> str:
    """Returns the plot of each collaborative run's global model's validation PSNR per round."""
    fig, ax = _figure("Collaborative runs: the global model's validation PSNR per round (dashed: bicubic)")
    series = [(run["name"], [(h["round"], h["psnr"], h["bicubic_psnr"]) for h in run["collaborative"]["history"]
                             if h["psnr"] is not None]) for run in collaborative_runs(status)]
    if _psnr_lines(ax, series, "o"):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("PSNR (dB)")
        ax.legend(fontsize=9)
    else:
        _empty(ax, "no round done yet")
    return _svg(fig)


SINGLE_TIME_WINDOW_S = 3600  # either side of progress reported at one moment only


def progress_figure(status: dict):
    """Returns the matplotlib figure of each run's progress over store time."""
    fig, ax = _figure("Progress over time (store time, UTC)")
    times = []
    for i, run in enumerate(status["runs"]):
        points, reached = [], 0
        for h in sorted(run["history"], key=lambda h: h["time"]):
            reached = max(reached, h["step"])
            points.append((datetime.fromtimestamp(h["time"], timezone.utc), 100 * reached / run["steps_total"]))
        if points:
            # A step line through one point has no length: mark it so that it shows.
            ax.step(*zip(*points), where="post", color=PALETTE[i % len(PALETTE)], label=run["name"],
                    marker="o" if len(points) == 1 else None)
            times += [t for t, _ in points]
    if times:
        import matplotlib.dates as mdates

        if min(times) == max(times):
            # A time axis of zero width would be widened by matplotlib to years around the point.
            pad = timedelta(seconds=SINGLE_TIME_WINDOW_S)
            ax.set_xlim(times[0] - pad, times[0] + pad)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of the run's steps")
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.legend(fontsize=9)
    else:
        _empty(ax, "no progress reported yet")
    return fig


def paper_reference() -> list[tuple[str, float]]:
    """Returns (label, images per second of one epoch) for each machine of the paper's tables."""
    from shardrun.config.paper import paper_figures

    figures = paper_figures()
    rows = []
    for key, table in figures["tables"].items():
        for row in table["rows"]:
            rows.append((f"paper, {key}: {row['device']}", table["images"] / row["seconds"]))
    return rows


def _hardware_plot(status: dict) -> str:
    import matplotlib.pyplot as plt

    paper = paper_reference()
    ours = [(f"this job, {h['run']}: {h['device']} ({h['platform']})", h["images_per_second"])
            for h in status["hardware"] if h["images_per_second"]]
    rows = paper + ours
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.32 * len(rows)))
    ax.set_title("Throughput by hardware, images per second of one epoch (log2 axis)", fontsize=11, loc="left")
    labels = [label for label, _ in rows]
    values = [value for _, value in rows]
    colours = ["#9aa5b1"] * len(paper) + [PALETTE[0]] * len(ours)
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log", base=2)
    ax.grid(True, axis="x", alpha=0.3)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.3g}", va="center", fontsize=8)
    ax.set_xlabel("images per second (grey: Temiz, Bilge, Uygur 2019, Tables 1-2)")
    return _svg(fig)


def _storage_plot(status: dict) -> str:
    import matplotlib.pyplot as plt

    accounts = status["accounts"]
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.45 * max(1, len(accounts))))
    ax.set_title("Storage per account (GB)", fontsize=11, loc="left")
    for y, a in enumerate(accounts):
        quota = (a["quota_bytes"] or 0) / 1e9
        if a["used_bytes"] is None:
            ax.barh(y, quota, color="#eef1f4", hatch="//", edgecolor="#9aa5b1")
            ax.text(quota / 2 if quota else 0, y, "unknown: unreachable", ha="center", va="center", fontsize=9)
            continue
        shards = min(a["placed_bytes"], a["used_bytes"]) / 1e9
        other = max(0, a["used_bytes"] / 1e9 - shards)
        ax.barh(y, shards, color=PALETTE[0], label="this job's shards" if y == 0 else None)
        ax.barh(y, other, left=shards, color=PALETTE[4], label="other files" if y == 0 else None)
        ax.barh(y, max(0, quota - shards - other), left=shards + other, color="#dde1e6",
                label="free" if y == 0 else None)
        ax.text(quota, y, f" {human_bytes(a['used_bytes'])} of {human_bytes(a['quota_bytes'])}", va="center",
                fontsize=8)
    ax.set_yticks(range(len(accounts)), [a["name"] for a in accounts])
    ax.invert_yaxis()
    ax.set_xlabel("GB")
    largest = max(((a["quota_bytes"] or 0) / 1e9 for a in accounts), default=0)
    if largest:
        ax.set_xlim(0, largest * 1.35)  # room for the "used of quota" labels
    if any(a["used_bytes"] is not None for a in accounts):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    return _svg(fig)


def _sessions_plot(status: dict) -> str:
    fig, ax = _figure("Session lengths (store time)")
    hist = status["sessions"]["length_histogram"]
    edges = [0, *hist["upper_hours"]]
    labels = [f"{a}-{b} h" for a, b in zip(edges, edges[1:])] + [f"≥{edges[-1]} h"]
    if status["sessions"]["count"]:
        ax.bar(range(len(labels)), hist["counts"], color=PALETTE[2])
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("sessions")
    else:
        _empty(ax, "no session yet")
    return _svg(fig)


# -- the page ---------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(status: dict) -> str:
    cards = []
    done = sum(r["steps_done"] for r in status["runs"])
    total = sum(r["steps_total"] for r in status["runs"])
    if total:
        cards.append(("Steps done", f"{done:,} of {total:,} ({100 * done / total:.1f}%)"))
    eta = status.get("eta")
    if eta:
        cards.append(("ETA", "done" if eta["finished"] else "no worker running" if not eta["workers_alive"]
                      else human_duration(eta["seconds"])))
    if len(status["runs"]) <= MAX_RUN_CARDS:
        for run in status["runs"]:
            if run["loss"]["best"] is not None:
                cards.append((f"{run['name']}: best loss", f"{run['loss']['best']:.4g}"))
            if run_validation(run):
                v = run_validation(run)
                cards.append((f"{run['name']}: PSNR vs bicubic", f"{v['psnr']:.2f} / {v['bicubic_psnr']:.2f} dB"))
    else:  # many runs: the best of them here, each in the table below
        losses = [r for r in status["runs"] if r["loss"]["best"] is not None]
        gains = [r for r in status["runs"] if r["validation"]]
        if losses:
            best = min(losses, key=lambda r: r["loss"]["best"])
            cards.append(("Lowest loss", f"{best['loss']['best']:.4g} ({best['name']})"))
        if gains:
            best = max(gains, key=lambda r: r["validation"]["gain_db"])
            cards.append(("Best PSNR gain over bicubic", f"{best['validation']['gain_db']:+.2f} dB ({best['name']})"))
    alive = sum(1 for w in status["workers"] if w["state"] in ("running", "alive"))
    cards.append(("Workers alive", f"{alive} of {len(status['workers'])}"))
    cards.append(("Sessions", f"{status['sessions']['count']:,}"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards) + "</div>"


def _runs_html(status: dict) -> str:
    rows = []
    for r in status["runs"]:
        c, loss, v = r["chunks"], r["loss"], run_validation(r)
        rows.append([
            _e(r["name"]), _e(f"{r['model']} x{r['scale']}"), _e(compute_label(r)), f"{r['steps_done']:,} of {r['steps_total']:,}",
            f"{r['epochs_done']:,.2f} of {r['epochs']:,}",
            f"{c['waiting']} / {c['ready']} / {c['running']} / {c['done']}" + _e(dropped_note(c)),
            _fmt(loss["current"], ".4g"), _fmt(loss["best"], ".4g") + ("" if loss["best"] is None else f" @ {loss['best_step']:,}"),
            "–" if v is None else f"{v['psnr']:.2f} dB ({v['bicubic_psnr']:.2f})",
            "–" if v is None else f"{v['ssim']:.4f} ({v['bicubic_ssim']:.4f})",
            _e(run_eta(status, r))])
    return _table(["run", "model", "compute", "steps", "epochs", "chunks waiting/ready/running/done", "loss", "best loss",
                   "val PSNR (bicubic)", "val SSIM (bicubic)", "ETA"], rows, left=3)


def _collaborative_html(run: dict) -> str:
    """Returns a collaborative run's section: its rounds, the current round's replicas and stragglers,
    and every round done with the global model's validation and the bytes it exchanged."""
    c = run["collaborative"]
    out = [f"<h3>{_e(run['name'])}</h3><p>{_e(collaborative_summary(run))}</p>"]
    cur = c["current"]
    if cur is not None and cur["replicas"]:
        rows = [[str(r["replica"]), _e(r["worker"] or "–"),
                 f'<span class="stale">{_e(replica_state(r))}</span>' if r["straggler"] else _e(replica_state(r)),
                 f"{r['step']:,}", f"{r['round_steps_done']:,} of {r['round_steps']:,}", _e(r["done_at"] or "–")]
                for r in cur["replicas"]]
        out.append(f"<p>Round {cur['round']} (steps {cur['start_step']:,} to {cur['end_step']:,}), {_e(cur['state'])}; "
                   f"opened {_e(cur['opened_at'] or '–')}, closes by timeout from {_e(cur['timeout_at'] or '–')} "
                   "(store time).</p>")
        out.append(_table(["replica", "worker", "state", "step", "steps in the round", "change in at"], rows, left=3))
        out.extend(f'<div class="note">{_e(straggler_text(run, st))}</div>' for st in cur["stragglers"])
    if c["history"]:
        rows = [[str(h["round"]), _fmt(h["step"], ","), _e(h["closed_by"] or "–"), _e(", ".join(map(str, h["replicas"]))),
                 "–" if h["psnr"] is None else f"{h['psnr']:.2f} dB ({h['bicubic_psnr']:.2f})", _fmt(h["ssim"], ".4f"),
                 _e(human_bytes(h["uploaded_bytes"])), _e(human_bytes(h["downloaded_bytes"])),
                 _e(h["outer_worker"] or "–"), _e(iso_time(h["done_time"]) or "–")] for h in c["history"]]
        out.append(_table(["round", "step", "closed by", "replicas", "global PSNR (bicubic)", "global SSIM",
                           "uploaded", "downloaded", "outer step by", "done at"], rows, left=1))
    b = c["bytes"]
    out.append(f"<p>Bytes exchanged: {_e(human_bytes(b['total']))} ({_e(human_bytes(b['uploaded']))} uploaded, "
               f"{_e(human_bytes(b['downloaded']))} downloaded; {_e(b['rule'])}).</p>")
    return "".join(out)


def _eta_html(eta: dict | None) -> str:
    if not eta:
        return ""
    if eta["finished"]:
        return "<p>Every run is done.</p>"
    if not eta["workers_alive"]:
        return f"<p>No ETA while no worker is running ({_e(training_left(eta))}).</p>"
    a = eta["allowance"]
    return (f"<p>ETA <b>{_e(human_duration(eta['seconds']))}</b> (about {_e(eta['at'] or 'unknown')}, store time), from the "
            f"recent throughput of each run's worker with {eta['workers_alive']} worker(s) alive; allowance for "
            f"lost sessions <b>+{(a['factor'] - 1) * 100:.1f}%</b>: {a['expired_attempts']} of {a['ended_attempts']} "
            f"chunk attempts ended by lease expiry, losing {_e(human_duration(a['lost_seconds']))} of "
            f"{_e(human_duration(a['worked_seconds']))} worked ({_e(a['rule'])}).</p>")


def _workers_html(status: dict) -> str:
    rows = []
    for w in status["workers"]:
        css = {"stale": "stale", "running": "ok", "alive": "ok"}.get(w["state"], "")
        state = f'<span class="{css}">{_e(worker_state(w))}</span>'
        rows.append([_e(w["id"]), _e(w["account"] or "?"), _e(w["platform"] or "?"), _e(w["device"] or "unknown"),
                     _e(worker_work(status, w)),
                     _fmt(w["step"], ","), _fmt(w["patches_per_second"], ",.1f"), _fmt(w["steps_per_second"], ",.3g"),
                     _e(w["last_seen"]), _e(human_duration(w["silent_seconds"])), state])
    return _table(["worker", "account", "platform", "device", "run/chunk", "step", "patches/s", "steps/s",
                   "last seen", "silent", "state"], rows, left=5)


def _sessions_html(sessions: dict) -> str:
    if not sessions["count"]:
        return "<p>No session yet.</p>"
    ends = ", ".join(f"{n} {k}" for k, n in sessions["ended"].items() if n)
    summary = (f"<p>{sessions['count']:,} session{'s' if sessions['count'] != 1 else ''} so far ({_e(ends)}); length median "
               f"{_e(human_duration(sessions['median_seconds']))}, mean {_e(human_duration(sessions['mean_seconds']))}, "
               f"longest {_e(human_duration(sessions['longest_seconds']))}; total "
               f"{_e(human_duration(sessions['total_seconds']))}.</p>")
    rows = [[_e(s["worker"]), _e(s["account"] or "?"), _e(s["device"] or "unknown"), _e(s["started"]),
             _e(human_duration(s["seconds"])), _e(s["end"]), str(s["chunks_done"])] for s in sessions["recent"]]
    return summary + _table(["worker", "account", "device", "started", "length", "end", "chunks done"], rows, left=4)


def _accounts_html(status: dict) -> str:
    rows = []
    for a in status["accounts"]:
        used = a["used_bytes"]
        rows.append([_e(a["name"]), "unknown (unreachable)" if a["reachable"] is False else _e(human_bytes(used)),
                     _e(human_bytes(a["quota_bytes"])),
                     f"{100 * used / a['quota_bytes']:.1f}" if used is not None and a["quota_bytes"] else "?",
                     str(a["shards"]), _e(human_bytes(a["placed_bytes"]))])
    return _table(["account", "used", "quota", "%", "shards", "shard bytes"], rows)


def _hardware_html(status: dict) -> str:
    rows = [[_e(h["device"]), _e(h["platform"]), _e(h["run"]), f"{h['patches_per_second']:,.1f}",
             f"{h['steps_per_second']:,.3g}", _fmt(h["images_per_second"], ",.3g"),
             _e(human_duration(h["epoch_seconds"])), f"{h['samples']:,}"] for h in status["hardware"]]
    return _table(["device", "platform", "run", "patches/s", "steps/s", "images/s", "one epoch", "reports"],
                  rows, left=3)


def status_html(status: dict) -> str:
    """Returns the whole page for a status object (see report.status_from_ledger)."""
    from shardrun.render.pictures import CSS as PICTURES_CSS, validation_pictures_html

    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "shardrun", "font.size": 9}):
        plots = [("Loss", _loss_plot(status)), ("PSNR", _psnr_plot(status)), ("Progress", _svg(progress_figure(status))),
                 ("Throughput", _hardware_plot(status)), ("Storage", _storage_plot(status)),
                 ("Sessions", _sessions_plot(status))]
        if collaborative_runs(status):
            plots.insert(2, ("Rounds", _rounds_plot(status)))
    plan = status["plan"]
    subtitle = (f"plan {_e(plan['id'])} of {_e(plan['planned_at'])}, {plan['images']:,} images"
                if plan else "no plan yet")
    if plan and plan.get("validation"):
        subtitle += f"; validation: {plan['validation']['images']:,} images, {_e(plan['validation']['name'])}"
    notes = "".join(f'<div class="note">{_e(n)}</div>' for n in status["notes"])
    for a in status["accounts"]:
        if a["reachable"] is False:
            notes += f'<div class="note">Account {_e(a["name"])}: usage unknown ({_e(a.get("error"))})</div>'
    collaborative = "".join(_collaborative_html(r) for r in collaborative_runs(status))
    if collaborative:
        collaborative = f"<h2>Collaborative runs</h2>{collaborative}"
    figures = "".join(f'<figure aria-label="{_e(name)}">{svg}<figcaption>{_e(name)}</figcaption></figure>'
                      for name, svg in plots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>shardrun status: {_e(status['job'])}</title><style>{CSS}{PICTURES_CSS}</style></head>
<body><main>
<h1>Job {_e(status['job'])}</h1>
<div class="sub">{subtitle}; as of the journal's latest event {_e(status.get('as_of') or '(none yet)')} (store time);
{status['journal']['events']:,} events; generated {_e(status['generated_at'])}.</div>
{notes}
{_cards(status)}
<h2>Runs</h2>{_runs_html(status)}{_eta_html(status.get('eta'))}
{collaborative}
<h2>Plots</h2><div class="plots">{figures}</div>
<h2>Validation pictures</h2><p>Bicubic, the network and the original, side by side (luma for one-channel runs).</p>
{validation_pictures_html(status)}
<h2>Workers</h2>{_workers_html(status) if status['workers'] else '<p>No worker seen in the last day.</p>'}
<h2>Sessions</h2>{_sessions_html(status['sessions'])}
<h2>Throughput by hardware</h2>{_hardware_html(status) if status['hardware'] else '<p>No throughput reported yet.</p>'}
<h2>Accounts</h2>{_accounts_html(status)}
</main></body></html>
"""
