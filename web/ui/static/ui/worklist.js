// Worklist: the rows are drawn on the server only (ui/_worklist_row.html). A live event
// re-fetches this same page's results with the current query string (?fragment=1), so the
// filters, search and page stay as they are while rows move.
"use strict";
(function () {
  const results = document.getElementById("worklist-results");
  const message = document.getElementById("worklist-message");
  let timer = null;

  function fragmentUrl() {
    const params = new URLSearchParams(location.search);
    params.set("fragment", "1");
    return location.pathname + "?" + params.toString();
  }
  function refresh() {
    return fetch(fragmentUrl(), {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) { results.innerHTML = html; })
      .catch(function () { /* the next event or reconnect reads again */ });
  }
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      refresh();
      if (window.radtriageCheckAlerts) window.radtriageCheckAlerts();
    }, 250);
  }
  window.radtriageRefreshWorklist = refresh;
  window.radtriageLive("/ws/worklist/", soon, refresh, soon);

  // Saved views: a name for the current filters and sort (the query string), kept in this
  // browser for this user; choosing one opens the worklist with them.
  (function () {
    const holder = document.querySelector(".saved-views");
    if (!holder) return;
    const key = "radtriage-views:" + holder.dataset.user;
    const select = document.getElementById("saved-views");
    const name = document.getElementById("view-name");
    const forget = document.getElementById("forget-view");
    const views = function () { return JSON.parse(localStorage.getItem(key) || "{}"); };
    function fill() {
      const saved = views();
      select.length = 1;
      for (const label of Object.keys(saved).sort()) {
        const option = new Option(label, saved[label]);
        option.selected = saved[label] === location.search;
        select.add(option);
      }
      forget.hidden = !select.value;
    }
    document.getElementById("save-view").addEventListener("click", function () {
      const label = name.value.trim();
      if (!label) { name.focus(); return; }
      const saved = views();
      saved[label] = location.search;
      localStorage.setItem(key, JSON.stringify(saved));
      name.value = "";
      fill();
    });
    select.addEventListener("change", function () { if (select.value !== location.search) location.search = select.value; else fill(); });
    forget.addEventListener("click", function () {
      const saved = views();
      delete saved[select.options[select.selectedIndex].text];
      localStorage.setItem(key, JSON.stringify(saved));
      fill();
    });
    fill();
  })();

  function post(url, body) {
    return fetch(url, {method: "POST", credentials: "same-origin",
                       headers: {"Content-Type": "application/json", "X-CSRFToken": window.radtriageCsrf()},
                       body: JSON.stringify(body || {})})
      .then(function (r) { return r.json().catch(function () { return {}; }).then(function (j) { return [r.status, j]; }); });
  }
  function said(body, fallback) {
    if (body && (body.error || body.detail)) return body.error || body.detail;
    if (body && typeof body === "object") {
      for (const key of Object.keys(body)) {
        const v = body[key];
        if (Array.isArray(v) && v.length) return String(v[0]);
      }
    }
    return fallback;
  }

  // Claim / release / take over / mark reviewed.
  results.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("tr[data-study-id]");
    const action = button.dataset.action;
    const body = {};
    if (action === "take-over") {
      // Taking a colleague's study is recorded with both names and the reason given.
      const reason = window.prompt("Take this study over from " + button.dataset.holder +
                                   "? Its unsigned draft becomes yours to continue. Reason (optional):", "");
      if (reason === null) return;
      body.reason = reason;
    }
    button.disabled = true;
    post("/api/studies/" + row.dataset.studyId + "/" + action + "/", body).then(function (res) {
      const done = {claim: "Claimed.", release: "Released.", "take-over": "Taken over.",
                    reviewed: "Marked reviewed (no report here)."}[action];
      message.textContent = res[0] < 300 ? done : said(res[1], "The server refused (HTTP " + res[0] + ").");
      message.className = res[0] < 300 ? "" : "error";
      refresh();
    });
  });

  // Analyse a study that has no analysis: the chosen condition on each of its images.
  results.addEventListener("submit", function (ev) {
    const form = ev.target.closest("form.analyse");
    if (!form) return;
    ev.preventDefault();
    const condition = form.elements.condition.value;
    const ids = form.dataset.imageIds.split(",").filter(Boolean);
    Promise.all(ids.map(function (id) {
      return post("/api/images/" + id + "/analyses/", {conditions: [condition]});
    })).then(function (answers) {
      const refused = answers.filter(function (res) { return res[0] >= 300; });
      message.className = refused.length ? "error" : "";
      message.textContent = refused.length ? said(refused[0][1], "The analysis was refused.") :
        "Analysis queued: " + condition + " on " + ids.length + " image(s).";
      refresh();
    });
  });
})();
