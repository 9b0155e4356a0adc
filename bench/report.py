"""The table `python -m bench` prints (Markdown): each figure as median (min–max) over runs, beside its target."""

from __future__ import annotations

from typing import Any

from bench.stats import Summary


def _s(d: dict[str, Any] | None, fmt: str = "{:,.0f}", unit: str = "") -> str:
    if not d:
        return "—"
    return Summary(median=d["median"], min=d["min"], max=d["max"], n=int(d["n"])).text(fmt, unit)


_MB_PER_MIB = 1.048576  # /proc gives KiB; the targets are in MB (10⁶ bytes)


def _mb(mib: dict[str, Any]) -> dict[str, Any]:
    """A summary in MiB as MB."""
    return {k: v * _MB_PER_MIB if k != "n" else v for k, v in mib.items()}


def _cores(per_name: dict[str, Any]) -> str:
    return ", ".join(f"{name} {d['median']:.2f}" for name, d in per_name.items())


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def table(summary: dict[str, Any]) -> str:
    parts = summary["parts"]
    rows: list[tuple[str, str, str, str]] = []

    gw = parts.get("gateway")
    if gw and "error" not in gw:
        sus, raw, sat = gw["gateway_sustained_msg_s"], gw["raw_pipe_msg_s"], gw["gateway_saturated_msg_s"]
        rows += [
            ("Publisher ceiling (pre-encoded QoS 1, broker, no subscriber)", _s(gw["publisher_ceiling_msg_s"],
                                                                              unit=" msg/s"), "—", "—"),
            ("Raw broker pipe: `mosquitto_sub -q 1`", _s(raw, unit=" msg/s"), "—", "—"),
            ("Gateway, saturated (fixed volume as fast as possible)", _s(sat, unit=" msg/s"), "—", "—"),
            ("Gateway, saturated, worst case for InfluxDB: a new job context (new series) on every message",
             _s(gw.get("gateway_new_series_msg_s"), unit=" msg/s"), "—", "—"),
            ("Gateway, sustained, 0 loss, no growing lag (paced steps)", _s(sus, unit=" msg/s"), "≥ 25,000",
             _verdict(sus["median"] >= 25_000)),
            ("Gateway sustained ÷ raw pipe's ceiling (its saturated rate), same run",
             _s(gw.get("gateway_sustained_vs_raw_pipe"), "{:.0%}"), "≥ 90 %",
             _verdict(gw["gateway_sustained_vs_raw_pipe"]["median"] >= 0.9)
             if "gateway_sustained_vs_raw_pipe" in gw else "—"),
            ("Gateway ÷ raw pipe, both saturated, same run", _s(gw["gateway_vs_raw_pipe"], "{:.0%}"), "—", "—"),
            ("Messages lost by the gateway (all runs and steps)", str(gw["gateway_lost"]), "0",
             _verdict(gw["gateway_lost"] == 0)),
            ("Gateway CPU at saturation", _s(gw["gateway_cpu_cores"], "{:.2f}", " core"), "—", "—"),
            *[(f"Cores used by each process, {what} (medians)", _cores(gw[key]), "—", "—")
              for key, what in (("raw_pipe_cpu_cores", "raw pipe"), ("saturated_cpu_cores", "gateway saturated"))
              if gw.get(key)],
            ("Gateway peak RSS (VmHWM)", f'{_s(gw["gateway_peak_rss_mib"], "{:.1f}", " MiB")} = '
             f'{_s(_mb(gw["gateway_peak_rss_mib"]), "{:.1f}", " MB")}', "≤ 60 MB",
             _verdict(_mb(gw["gateway_peak_rss_mib"])["median"] <= 60)),
        ]
    sh = parts.get("shared")
    if sh and "error" not in sh:
        rows += [
            (f"{sh['members']} gateways on one shared subscription, saturated (one gateway, same run: "
             f"{_s(sh['single_msg_s'])})", _s(sh["shared_msg_s"], unit=" msg/s"), "—", "—"),
            (f"{sh['members']} gateways ÷ raw pipe (saturated, same run); CPU of all; lost",
             f"{_s(sh['shared_vs_raw_pipe'], '{:.0%}')}; {_s(sh['shared_cpu_cores'], '{:.2f}', ' core')}; "
             f"{sh['lost']}", "—; —; 0 (an option, not the target's gateway)", _verdict(sh["lost"] == 0)),
        ]
    lat = parts.get("latency")
    if lat and "error" not in lat:
        for rate in ("100", "1000"):
            if rate in lat:
                r = lat[rate]
                target = "p99 ≤ 25 ms" if rate == "1000" else "—"
                ok = r["p99_ms"]["median"] <= 25 if rate == "1000" else None
                rows.append((f"Latency publish → queryable (InfluxDB's 204) at {int(rate):,} msg/s: p50 / p99",
                             f"{_s(r['p50_ms'], '{:.1f}')} / {_s(r['p99_ms'], '{:.1f}')} ms", target, _verdict(ok)))
        live = lat.get("live_board", {})
        if "p99_ms" in live:
            rows.append(("Machine event → live board (SSE): p50 / p99",
                         f"{_s(live['p50_ms'])} / {_s(live['p99_ms'])} ms", "p99 ≤ 1 s",
                         _verdict(live["p99_ms"]["median"] <= 1000)))
        elif live:
            rows.append(("Machine event → live board", "TODO: " + str(live.get("todo", live.get("error"))),
                         "p99 ≤ 1 s", "—"))
    for proto, label, target in (("modbus", "Modbus machines polled at 1 Hz, no missed interval", 200),
                                 ("opcua", "OPC UA machines followed by subscription (100 ms)", 100)):
        res = parts.get(proto)
        if not res or "error" in res:
            continue
        steps = res["steps"]
        cap = res["capacity"]
        tried = max(s["machines"] for s in steps)
        all_passed = all(s["passed"] for s in steps)
        cap_text = f"≥ {cap}" if all_passed else str(cap or 0)
        rows.append((f"{label} (steps {', '.join(str(s['machines']) for s in steps)})",
                     f"{cap_text} (largest step tried: {tried})", f"≥ {target}", _verdict((cap or 0) >= target)))
        for s in steps:
            if s["cpu_cores"] is None:
                continue
            detail = (_s(s["missed_intervals"]) if proto == "modbus"
                      else _s({k: v * 1000 if k != "n" else v for k, v in s["lag_p99_s"].items()}) + " ms")
            rows.append((f"  one collector, {s['machines']} {proto} machines: CPU, peak RSS, "
                         + ("missed intervals" if proto == "modbus" else "lag p99") + ", parts seen",
                         f"{_s(s['cpu_cores'], '{:.2f}')} core, {s['peak_rss_mib']:.0f} MiB, {detail}, parts "
                         f"{s['parts_made'] - s['parts_missing']}/{s['parts_made']}",
                         "< 1 core" + (", ≤ 80 MB at 50" if proto == "modbus" and s["machines"] == 50 else ""),
                         _verdict(s["cpu_cores"]["max"] < 1 and (
                             _MB_PER_MIB * s["peak_rss_mib"] <= 80 if proto == "modbus" and s["machines"] == 50
                             else True))))
    dash = parts.get("dashboards")
    if dash and "results" in dash:
        for state, boards in dash["results"].items():
            for b in boards:
                rows.append((f"Dashboard full refresh, {b['title']} ({state}, {dash['history']['days']} days)",
                             f"{_s(b['full_refresh_ms'])} ms", "≤ 300 ms", _verdict(b["meets_target"])))
    elif dash:
        rows.append(("Dashboard full refresh", str(dash.get("skipped") or dash.get("error")), "≤ 300 ms", "—"))
    prof = parts.get("profile")
    if prof and "threads" in prof:
        threads = ", ".join(f"{k.split(': ')[-1]} {v:.0f} %" for k, v in prof["threads"].items())
        rows.append(("Gateway profile at saturation (py-spy, share of samples by thread)", threads, "—", "—"))

    machine = summary["machine"]
    head = (f"Copeau benchmark — {summary['date']} — {machine.get('cpu_model', '?')}, {machine['cpus']} CPU, "
            f"{machine.get('memory_gib', '?')} GiB, {machine.get('os', '?')}; "
            f"{'QUICK run, ' if summary['quick'] else ''}{summary['runs']} run(s); median (min–max)")
    lines = [head, "", "| figure | measured | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines + _footer(parts))


def _footer(parts: dict[str, Any]) -> list[str]:
    lines = []
    earlier = [f"{k} ({v.get('_meta', {}).get('date') or v.get('date', '?')})" for k, v in parts.items()
               if v.get("earlier_run")]
    if earlier:
        lines += ["", "Not run this time; figures from the last run of: " + ", ".join(earlier) + "."]
    loads = {k: v["_meta"] for k, v in parts.items() if "_meta" in v and not v.get("earlier_run")}
    if loads:
        lines += ["", "Machine CPU busy during each part (all processes, others' included): " + ", ".join(
            f"{k} {m['machine_cpu_busy_pct']:.0f} % ({m['seconds']:.0f} s)" for k, m in loads.items())]
    return lines
