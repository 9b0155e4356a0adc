// Copeau kiosk: one page per machine, driven by a USB badge/barcode reader that types a code and Enter.
// The scan field keeps the focus (except while the apprentice types numbers in the declaration form), every
// scanned code goes to the server, which decides whether it is a badge or a job card. The page polls the
// station's state every few seconds, so parts and cycle times appear without reloading.
// Every text comes from the server's catalogue (the JSON in #texts); nothing to translate here.
(() => {
  "use strict";
  const root = document.getElementById("kiosk");
  const machine = root.dataset.machine;
  const csrf = root.dataset.csrf;
  const pollMs = Number(root.dataset.pollMs) || 2000;
  const T = JSON.parse(document.getElementById("texts").textContent);
  const $ = (id) => document.getElementById(id);
  const scan = $("scan");
  const steps = ["idle", "identified", "running", "declare"];
  let state = null;
  let declaring = false;
  let busy = false;
  let messageTimer = null;

  const fmt = (key, values = {}) =>
    (T[key] ?? key).replace(/\{(\w+)\}/g, (_, name) => (values[name] ?? "").toString());
  const number = (value, digits) =>
    value === null || value === undefined ? "–" : Number(value).toLocaleString(document.documentElement.lang, {
      maximumFractionDigits: digits, minimumFractionDigits: digits,
    });

  class Refused extends Error {}

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(`/api/kiosque/${encodeURIComponent(machine)}/${path}`, {
        method,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new Refused(T.offline);
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Refused(data.message || T.offline);
    return data;
  }

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 10000 : 6000);
  }

  function show(step) {
    for (const name of steps) $(`step-${name}`).hidden = name !== step;
    root.dataset.step = step;
  }

  function jobButton(job) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "job";
    const code = document.createElement("strong");
    code.textContent = job.code;
    const detail = document.createElement("span");
    detail.textContent = fmt("job_line", { customer: job.customer, part_number: job.part_number, due_date: job.due_date });
    button.append(code, detail);
    button.addEventListener("click", () => act(() => api("POST", "travail", { order: job.order, operation: job.operation })));
    return button;
  }

  function render(next) {
    state = next;
    if (next.step !== "running") declaring = false;
    if (next.step === "identified") {
      $("greeting").textContent = fmt("identified", { first_name: next.first_name || "" });
      const list = $("planned");
      list.replaceChildren(...next.planned.map(jobButton));
      $("no-planned").hidden = next.planned.length > 0;
    }
    if (next.step === "running") {
      const job = next.job;
      $("job-title").textContent = fmt("running", { first_name: next.first_name || "", job: job.code });
      $("job-detail").textContent = fmt("job_line", { customer: job.customer, part_number: job.part_number, due_date: job.due_date });
      $("job-good").textContent = number(next.job_good, 0);
      $("job-target").textContent = fmt("target", { quantity: job.quantity });
      $("session-parts").textContent = number(next.session_parts, 0);
      $("last-cycle").textContent = next.last_cycle_s == null ? "–" : fmt("seconds", { value: number(next.last_cycle_s, 1) });
      $("standard-cycle").textContent = fmt("standard", { value: number(job.standard_cycle_s, 1) });
      $("counts-off").hidden = next.counts_ok;
      if (next.ask_declaration && !declaring) openDeclaration();
      updateTotal();
    }
    show(declaring ? "declare" : next.step);
  }

  function openDeclaration() {
    declaring = true;
    $("good").value = state && state.session_parts != null ? state.session_parts : 0;
    for (const input of document.querySelectorAll("input.scrap")) input.value = 0;
    updateTotal();
    show("declare");
  }

  function declared() {
    const scrap = {};
    let total = 0;
    for (const input of document.querySelectorAll("input.scrap")) {
      const n = Math.max(0, parseInt(input.value, 10) || 0);
      if (n > 0) scrap[input.dataset.reason] = n;
      total += n;
    }
    const good = Math.max(0, parseInt($("good").value, 10) || 0);
    return { good, scrap, total: good + total };
  }

  function updateTotal() {
    const { total } = declared();
    const made = state && state.session_parts != null ? state.session_parts : "–";
    $("declare-total").textContent = fmt("declare_total", { declared: total, made });
  }

  async function act(request) {
    if (busy) return;
    busy = true;
    try {
      const next = await request();
      if (next.ended_session) {
        declaring = false;
        say(fmt("ended", { session: next.ended_session }), "ok");
      }
      render(next);
      if (next.step === "running") refresh();  // the live counts come with the state endpoint
    } catch (err) {
      say(err.message, "error");
    } finally {
      busy = false;
      keepFocus();
    }
  }

  async function refresh() {
    if (busy) return;
    try {
      render(await api("GET", "etat"));
      $("offline").hidden = true;
    } catch (err) {
      $("offline").hidden = false;
    }
  }

  function keepFocus() {
    const active = document.activeElement;
    if (declaring && active && active.tagName === "INPUT" && active !== scan) return;
    if (active !== scan) scan.focus();
  }

  scan.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    const code = scan.value.trim();
    scan.value = "";
    if (code) act(() => api("POST", "scan", { code }));
  });
  scan.addEventListener("blur", () => setTimeout(keepFocus, 0));
  document.addEventListener("click", () => setTimeout(keepFocus, 0));
  $("cancel").addEventListener("click", () => act(() => api("POST", "annuler")));
  $("end-job").addEventListener("click", () => { openDeclaration(); });
  $("declare-back").addEventListener("click", () => { declaring = false; show("running"); });
  $("declare-submit").addEventListener("click", () => {
    const { good, scrap } = declared();
    act(() => api("POST", "declaration", { good, scrap }));
  });
  for (const button of document.querySelectorAll("button.step-btn")) {
    button.addEventListener("click", () => {
      const input = $(button.dataset.target);
      const step = Number(button.dataset.step);
      input.value = Math.max(0, (parseInt(input.value, 10) || 0) + step);
      // A part declared as scrap is no longer a good one: keep the total where it was.
      if (input.classList.contains("scrap")) {
        const good = $("good");
        good.value = Math.max(0, (parseInt(good.value, 10) || 0) - step);
      }
      updateTotal();
    });
  }
  for (const input of document.querySelectorAll("#step-declare input")) input.addEventListener("input", updateTotal);

  refresh();
  setInterval(refresh, pollMs);
  keepFocus();
})();
