// batchml's web page: sort the runs table, highlight the best run by a metric, move aliases
// (compare-and-set, with a confirmation) and "try it" against POST /invocations.
// Plain JavaScript, no library; values from the server are set with textContent only.
"use strict";

(function () {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // --- runs: sorting ---------------------------------------------------------------------

  function cellValue(row, key) {
    const cell = row.querySelector(`td[data-key="${CSS.escape(key)}"]`);
    return cell ? cell.dataset.value : "";
  }

  function runNumber(id) {
    const match = /\/(\d+)$/.exec(id);
    return match ? Number(match[1]) : NaN;
  }

  function sortRuns(th) {
    const table = th.closest("table");
    const body = table.tBodies[0];
    const key = th.dataset.key;
    const kind = th.dataset.kind;
    const current = th.getAttribute("aria-sort");
    let direction;
    if (current === "ascending") direction = "descending";
    else if (current === "descending") direction = "ascending";
    else if (kind === "number") direction = th.dataset.better === "lower" ? "ascending" : "descending";
    else direction = "ascending";
    $$("th[aria-sort]", table).forEach((h) => h.setAttribute("aria-sort", "none"));
    th.setAttribute("aria-sort", direction);
    const sign = direction === "ascending" ? 1 : -1;
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const va = cellValue(a, key), vb = cellValue(b, key);
      if (kind === "number") {  // runs without the metric go last either way
        if (va === "" || vb === "") return (va === "") - (vb === "");
        return sign * (Number(va) - Number(vb));
      }
      if (kind === "run") {
        const na = runNumber(va), nb = runNumber(vb);
        if (!Number.isNaN(na) && !Number.isNaN(nb) && na !== nb) return sign * (na - nb);
      }
      return sign * va.localeCompare(vb);
    });
    rows.forEach((r) => body.appendChild(r));
  }

  // --- runs: the best run by the picked metric ---------------------------------------------

  function highlightBest() {
    const picker = $("#metric-picker");
    const table = $("#runs-table");
    if (!picker || !table) return;
    const metric = picker.value;
    const option = picker.selectedOptions[0];
    const lower = option && option.dataset.better === "lower";
    if (option && option.dataset.detail === "true") showDetail(true);
    const key = "metric:" + metric;
    let best = null, bestValue = null;
    // the first of equal values in the server's order (newest first) wins, as on the server
    const rows = Array.from(table.tBodies[0].rows)
      .sort((a, b) => runNumber(b.dataset.runId) - runNumber(a.dataset.runId));
    for (const row of rows) {
      const raw = cellValue(row, key);
      if (raw === "") continue;
      const value = Number(raw);
      if (best === null || (lower ? value < bestValue : value > bestValue)) {
        best = row; bestValue = value;
      }
    }
    $$("tr.best", table).forEach((r) => r.classList.remove("best"));
    $$(".picked", table).forEach((c) => c.classList.remove("picked"));
    $$(`[data-key="${CSS.escape(key)}"]`, table).forEach((c) => c.classList.add("picked"));
    const out = $("#best-run");
    out.textContent = "";
    if (best === null) {
      out.textContent = `No run has ${metric}.`;
      return;
    }
    best.classList.add("best");
    out.append(`Best by ${metric} (${lower ? "lower" : "higher"} is better): `);
    const strong = document.createElement("strong");
    strong.textContent = best.dataset.runId;
    out.append(strong, ` (${bestValue.toFixed(4)})`);
  }

  function showDetail(on) {
    const box = $("#show-detail");
    if (box) box.checked = on;
    const table = $("#runs-table");
    if (table) table.classList.toggle("hide-detail", !on);
  }

  // --- aliases ---------------------------------------------------------------------------

  let pendingMove = null;

  function setStatus(text, isError) {
    const status = $("#move-status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function askMove(button) {
    const row = button.closest("tr");
    const model = button.dataset.model;
    const alias = button.dataset.alias || ($(".alias-name", row) || {}).value || "";
    const version = Number($(".alias-target", row).value);
    const expect = button.dataset.current === "" ? null : Number(button.dataset.current);
    const reason = ($(".alias-reason", row) || {}).value || "";
    if (!alias.trim()) { setStatus("Name the new alias first.", true); return; }
    if (expect === version) { setStatus(`${model}@${alias} already points at version ${version}.`, true); return; }
    pendingMove = { model, alias: alias.trim(), version, expect, reason: reason.trim() };
    $("#move-question").textContent = expect === null
      ? `Set ${model}@${pendingMove.alias} to version ${version}?`
      : `Move ${model}@${pendingMove.alias} from version ${expect} to version ${version}?`;
    $("#move-detail").textContent = (reason.trim() ? `Reason: ${reason.trim()}. ` : "")
      + "Servers following this alias switch to the new version within a second. "
      + "If someone moved it meanwhile, nothing changes and you are told.";
    $("#move-dialog").showModal();
  }

  async function refreshModels() {
    const response = await fetch("/", { headers: { Accept: "text/html" } });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("models-body");
    if (fresh) $("#models-body").replaceChildren(...Array.from(fresh.childNodes));
    const serving = doc.getElementById("serving");
    if (serving) $("#serving").replaceChildren(...Array.from(serving.childNodes));
  }

  async function confirmMove() {
    const move = pendingMove;
    pendingMove = null;
    $("#move-dialog").close();
    if (!move) return;
    const token = ($("#api-token") || {}).value || "";
    const url = `/api/models/${encodeURIComponent(move.model)}/aliases/${encodeURIComponent(move.alias)}`;
    setStatus(`Moving ${move.model}@${move.alias} …`, false);
    let response, body;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json",
                   ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify({ version: move.version, expect: move.expect,
                               reason: move.reason || null }),
      });
      body = await response.json();
    } catch (err) {
      setStatus(`The move did not reach the server: ${err}`, true);
      return;
    }
    if (response.ok) {
      setStatus(`${move.model}@${body.alias} now points at version ${body.to_version}`
                + (body.from_version ? ` (was ${body.from_version})` : "") + ".", false);
    } else if (response.status === 401) {
      setStatus("Enter the API token (BATCHML_API_TOKEN) above, then move again.", true);
    } else {
      setStatus(body.message || `The server refused the move (${response.status}).`, true);
    }
    await refreshModels();
  }

  // --- try it ----------------------------------------------------------------------------

  function tryRecord() {
    const record = {};
    for (const field of $$("[data-column]", $("#try-form"))) {
      const type = field.dataset.type;
      if (type === "bool") record[field.dataset.column] = field.checked;
      else if (type === "string") record[field.dataset.column] = field.value;
      else if (field.value.trim() === "") record[field.dataset.column] = null;
      else record[field.dataset.column] = Number(field.value);
    }
    return record;
  }

  function showPrediction(prediction) {
    $("#try-label").textContent = String(prediction.label);
    const probas = Object.keys(prediction).filter((k) => k.startsWith("proba_"));
    let proba = prediction.proba;
    if (typeof proba !== "number" && probas.length) {
      proba = Math.max(...probas.map((k) => Number(prediction[k])));
    }
    $("#try-proba").textContent = typeof proba === "number" ? proba.toFixed(4) : "—";
    const table = $("#try-classes");
    table.replaceChildren();
    for (const key of probas) {
      const row = table.insertRow();
      row.insertCell().textContent = `P(${key.slice(6)})`;
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = Number(prediction[key]).toFixed(4);
    }
    showExplanation(prediction.explanation);
    $("#try-result").hidden = false;
  }

  // an `explanation` output: the features with the largest contributions ({feature,
  // contribution} per entry, largest first), shown as signed bars; anything else as JSON
  function showExplanation(explanation) {
    const box = $("#try-explanation-box");
    const table = $("#try-explanation");
    const raw = $("#try-explanation-raw");
    table.replaceChildren();
    raw.textContent = "";
    box.hidden = explanation === undefined || explanation === null;
    if (box.hidden) return;
    const entries = Array.isArray(explanation) && explanation.every(
      (e) => e && typeof e.feature === "string" && typeof e.contribution === "number");
    if (!entries) {
      raw.textContent = typeof explanation === "string"
        ? explanation : JSON.stringify(explanation, null, 2);
      return;
    }
    const peak = Math.max(1e-12, ...explanation.map((e) => Math.abs(e.contribution)));
    for (const entry of explanation) {
      const row = table.insertRow();
      row.insertCell().textContent = entry.feature;
      const value = row.insertCell();
      value.className = "num";
      value.textContent = (entry.contribution >= 0 ? "+" : "") + entry.contribution.toFixed(4);
      const bar = document.createElement("meter");
      bar.min = 0; bar.max = 1; bar.value = Math.abs(entry.contribution) / peak;
      bar.className = entry.contribution >= 0 ? "up" : "down";
      row.insertCell().appendChild(bar);
    }
  }

  async function submitTry(event) {
    event.preventDefault();
    const error = $("#try-error");
    const button = $("#try-submit");
    error.textContent = "";
    button.disabled = true;
    try {
      const response = await fetch("/invocations", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ dataframe_records: [tryRecord()] }),
      });
      const body = await response.json();
      if (!response.ok) {
        $("#try-result").hidden = true;
        error.textContent = body.message || `The server answered ${response.status}.`;
        return;
      }
      showPrediction(body.predictions[0]);
    } catch (err) {
      error.textContent = `The request failed: ${err}`;
    } finally {
      button.disabled = false;
    }
  }

  // --- wiring (delegated, so refreshed sections need no re-binding) -----------------------

  document.addEventListener("click", (event) => {
    const sortButton = event.target.closest("button.sort");
    if (sortButton) { sortRuns(sortButton.closest("th")); return; }
    const moveButton = event.target.closest("button.move-alias");
    if (moveButton) { askMove(moveButton); return; }
    if (event.target.closest("#move-confirm")) { confirmMove(); return; }
    if (event.target.closest("#move-cancel")) { pendingMove = null; $("#move-dialog").close(); }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const picker = $("#metric-picker");
    if (picker) {
      picker.addEventListener("change", highlightBest);
      highlightBest();
    }
    const box = $("#show-detail");
    if (box) box.addEventListener("change", () => showDetail(box.checked));
    const form = $("#try-form");
    if (form) form.addEventListener("submit", submitTry);
    document.body.dataset.ready = "true";
  });
})();
