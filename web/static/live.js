// Copeau live board: one tile per machine, kept up to date by server-sent events (/api/tableau/flux), never by
// reloading the page. The server sends a "snapshot" (every tile) when the stream opens, then "update" events (the
// tiles that changed) and a "ping" when nothing happened for a few seconds. If nothing at all comes for three pings'
// time, or the web service says it lost the broker, a banner says that the data feed is interrupted, and the page
// opens the stream again by itself. Every text comes from the server's catalogue (#live-config); nothing to
// translate here.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("live-config").textContent);
  const T = config.texts;
  const lang = document.documentElement.lang || "fr";
  const zone = config.timezone;
  const heartbeatMs = Number(config.heartbeat_ms) || 5000;
  // Set once per page load: a test (or a curious maître) can tell that the page was never reloaded.
  window.copeauBoardLoadedAt = window.copeauBoardLoadedAt || Date.now();

  const fmt = (key, values = {}) =>
    (T[key] ?? key).replace(/\{(\w+)\}/g, (_, name) => (values[name] ?? "").toString());
  const numberFormats = {};
  const number = (value, digits = 0) => {
    const f = numberFormats[digits] ??= new Intl.NumberFormat(lang, {
      maximumFractionDigits: digits, minimumFractionDigits: digits });
    return f.format(value);
  };
  const timeFormat = new Intl.DateTimeFormat(lang, { timeZone: zone, hour: "2-digit", minute: "2-digit" });
  const dayFormat = new Intl.DateTimeFormat(lang, { timeZone: zone, day: "2-digit", month: "2-digit" });
  const dayKey = new Intl.DateTimeFormat("en-CA", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" });
  const fromNs = (ns) => new Date(Math.floor(ns / 1e6));
  const sameDay = (a, b) => dayKey.format(a) === dayKey.format(b);
  const when = (ns) => {  // "14:35" today, "18/12 14:35" another day
    const date = fromNs(ns);
    return sameDay(date, new Date()) ? timeFormat.format(date) : `${dayFormat.format(date)} ${timeFormat.format(date)}`;
  };
  const secondsFormat = new Intl.DateTimeFormat(lang, {
    timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const clock = (ns) => {  // "14:35:07" today, "18/12 14:35" another day
    const date = fromNs(ns);
    return sameDay(date, new Date()) ? secondsFormat.format(date) : when(ns);
  };
  const duration = (seconds) => {
    const minutes = Math.round(Math.abs(seconds) / 60);
    if (minutes < 60) return fmt("minutes", { m: minutes });
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return fmt("hours", { h: hours, m: String(minutes % 60).padStart(2, "0") });
    return fmt("days", { d: Math.floor(hours / 24), h: hours % 24 });
  };

  // -- tiles

  const tiles = new Map();
  for (const el of document.querySelectorAll(".tile")) {
    const q = (selector) => el.querySelector(selector);
    tiles.set(el.dataset.machine, {
      el, word: q(".state-word"), why: q(".why"), jobCode: q(".job-code"), apprentice: q(".apprentice"),
      count: q(".count"), good: q(".good"), target: q(".target"), meter: q(".meter"), fill: q(".fill"),
      cycle: q(".cycle"), standard: q(".standard"), etaFact: q(".eta-fact"), eta: q(".eta"), margin: q(".margin"),
      due: q(".due"),
    });
  }

  function why(tile) {
    if (tile.state === "offline") return fmt(`offline.${tile.offline_reason}`);
    if (tile.state === "alarm" && tile.alarm && (tile.alarm.text || tile.alarm.code)) {
      return [tile.alarm.code, tile.alarm.text].filter(Boolean).join(" — ");
    }
    const since = tile.since_ns ? fmt("since", { time: when(tile.since_ns) }) : "";
    const heard = tile.last_event_ns ? fmt("last_event", { time: clock(tile.last_event_ns) }) : "";
    return [since, heard].filter(Boolean).join(" · ");
  }

  function render(tile) {
    const t = tiles.get(tile.machine);
    if (!t) return;
    t.el.dataset.state = tile.state;
    t.word.textContent = fmt(`state.${tile.state}`);
    t.why.textContent = why(tile);

    const job = tile.job;
    t.jobCode.textContent = job ? fmt("job", { order: job.order, operation: job.operation }) : fmt("no_job");
    t.apprentice.textContent = job && job.apprentice ? fmt("apprentice", { code: job.apprentice }) : "";
    t.count.hidden = !job;
    t.meter.hidden = !job || !job.quantity;
    if (tile.good === null || tile.good === undefined) {
      t.good.textContent = "…";
      delete t.el.dataset.good;
      delete t.el.dataset.made;
    } else {
      t.good.textContent = number(tile.good);
      t.el.dataset.good = String(tile.good);
      t.el.dataset.made = String(tile.made);
    }
    if (job && job.quantity) {
      const scrap = tile.scrap ? ` · ${fmt("scrap", { scrap: number(tile.scrap) })}` : "";
      t.target.textContent = `${fmt("target", { quantity: number(job.quantity) })} ${fmt("good")}${scrap}`;
      t.fill.style.width = `${Math.min(100, (100 * (tile.good || 0)) / job.quantity)}%`;
    } else {
      t.target.textContent = job ? fmt("good") : "";
    }

    const standard = job && job.standard_cycle_s;
    const last = tile.last_cycle_s;
    t.cycle.textContent = last === null || last === undefined ? "–" : fmt("seconds", { value: number(last, 1) });
    t.cycle.classList.toggle("slow", Boolean(standard) && last > standard * 1.1);
    t.standard.textContent = standard ? fmt("standard", { value: number(standard, 1) }) : "";

    const eta = tile.eta;
    t.etaFact.hidden = !eta;
    if (eta) {
      // The due day, not the midnight after it (1 s before: these big integers are only exact to ~256 ns in JS).
      const due = fmt("due", { date: dayFormat.format(fromNs(eta.due_ns - 1e9)) });
      t.due.textContent = eta.basis === "standard" ? `${due} · ${fmt("basis.standard")}` : due;
      const done = eta.basis === "done";
      t.eta.textContent = done ? fmt("done") : when(eta.eta_ns);
      t.margin.textContent = done ? "" : fmt(eta.late ? "late" : "ahead", { duration: duration(eta.delay_s) });
      t.margin.classList.toggle("late", eta.late && !done);
      t.margin.classList.toggle("ahead", !eta.late && !done);
    }
  }

  // -- the stream, and the banner when it or the web service's MQTT link is down

  const banner = document.getElementById("feed-down");
  const bannerWhy = document.getElementById("feed-down-why");
  let source = null;
  let streamUp = true;  // until proven otherwise: no banner flashing while the first snapshot comes
  let feedConnected = true;
  let lastMessage = Date.now();
  let connectedAt = 0;
  let retryTimer = null;

  function showFeed() {
    const down = !streamUp || !feedConnected;
    banner.hidden = !down;
    document.body.classList.toggle("feed-is-down", down);
    bannerWhy.textContent = !streamUp ? fmt("feed_down.stream") : fmt("feed_down.mqtt");
  }

  function heard() {
    lastMessage = Date.now();
    document.getElementById("updated").textContent = fmt("updated", { time: timeFormat.format(new Date()) });
  }

  // -- Copeau's own services (health reports): one line each under the tiles; red when one is in trouble

  const strip = document.getElementById("services");
  function service(s) {
    const facts = [];
    if (s.silent) facts.push(fmt("svc.silent", { time: clock(s.ts_ns) }));
    if (!s.mqtt_connected) facts.push(fmt("svc.mqtt_down"));
    if (s.kind === "collector") {
      facts.push(fmt("svc.outbox", { n: number(s.outbox_events) }));
      if (s.spool_level > 0) facts.push(fmt(`svc.spool.${s.spool_level}`, { n: number(s.shed_events) }));
    } else {
      facts.push(fmt("svc.dead_letters", { n: number(s.dead_letters) }));
      facts.push(fmt("svc.queue", { n: number(s.queue_depth) }));
      if (!s.influx_ok) facts.push(fmt("svc.influx_down"));
    }
    facts.push(fmt("svc.reconnects", { n: number(s.mqtt_reconnects) }));
    const li = document.createElement("li");
    li.dataset.service = `${s.kind}/${s.service}`;
    li.dataset.trouble = String(s.trouble);
    const name = document.createElement("strong");
    name.textContent = fmt(`svc.${s.kind}`, { id: s.service });
    li.append(name, ` ${facts.join(" · ")}`);
    return li;
  }
  function renderServices(services) {
    if (!strip || !services) return;
    strip.replaceChildren(...services.map(service));
    strip.hidden = services.length === 0;
  }

  function apply(view) {
    feedConnected = view.feed_connected;
    streamUp = true;
    for (const tile of view.tiles) render(tile);
    renderServices(view.services);
    heard();
    showFeed();
    document.body.dataset.rev = String(view.rev);
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    connectedAt = Date.now();
    source = new EventSource(config.stream);
    source.addEventListener("snapshot", (e) => apply(JSON.parse(e.data)));
    source.addEventListener("update", (e) => apply(JSON.parse(e.data)));
    source.addEventListener("ping", () => heard());
    source.addEventListener("error", () => {
      streamUp = false;
      showFeed();
      // The browser reconnects by itself after a network error, but not after a refusal (e.g. 503).
      if (source.readyState === EventSource.CLOSED) retryTimer = setTimeout(connect, 3000);
    });
  }

  setInterval(() => {
    document.getElementById("clock").textContent = timeFormat.format(new Date());
    // A stream that stays open but says nothing (a frozen proxy, a sleeping laptop) is as good as gone: open a
    // new one, and again every three heartbeats for as long as nothing comes.
    const now = Date.now();
    if (now - lastMessage > 3 * heartbeatMs && now - connectedAt > 3 * heartbeatMs) {
      streamUp = false;
      showFeed();
      connect();
    }
  }, 1000);

  showFeed();
  connect();
})();
