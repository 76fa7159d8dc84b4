// Batches: the new-batch form (POST /api/batches/) and a batch's live progress (/ws/batches/<id>/).
"use strict";
(function () {
  const esc = window.radtriageEscape;
  const form = document.getElementById("batch-form");
  if (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      const data = new FormData(form);
      if (!form.archive.files.length) data.delete("archive");
      if (!form.files.files.length) data.delete("files");
      const message = document.getElementById("batch-message");
      message.textContent = "Importing…";
      fetch("/api/batches/", {method: "POST", body: data, credentials: "same-origin",
                              headers: {"X-CSRFToken": window.radtriageCsrf()}})
        .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
        .then(function (res) {
          if (res.ok) { location.href = res.body.page; return; }
          message.textContent = res.body.error || JSON.stringify(res.body);
        })
        .catch(function () { message.textContent = "The import could not be sent; try again."; });
    });
  }

  const box = document.getElementById("batch-progress");
  if (!box) return;
  const id = box.dataset.batchId;
  let best = -1, failed = null, state = box.dataset.state;
  // Each progress event (one per job ended) carries the counts, the positives per condition by
  // the finding rule, and the time left at the measured rate (web.clinical.batches.summary).
  function show(p) {
    if (p.done < best) return;  // events from several workers may cross: never go backwards
    best = p.done;
    state = p.state;
    const bar = document.getElementById("batch-bar");
    bar.max = p.total || 1; bar.value = p.done;
    document.getElementById("batch-count").textContent =
      p.done + " / " + p.total + " analyses ended, " + p.failed + " failed (" + p.percent + "%)";
    document.getElementById("batch-eta").textContent = p.eta_text || "";
    document.getElementById("batch-state").textContent = p.state;
    document.getElementById("batch-note").textContent = p.note || "";
    const pos = Object.keys(p.positives || {}).map(function (c) {
      return '<li data-condition="' + esc(c) + '">' + esc(c) + ": <b>" + p.positives[c] + "</b></li>"; });
    document.getElementById("batch-positives").innerHTML = pos.join("") || "<li>None yet.</li>";
    document.getElementById("batch-positives-when").textContent = p.state === "done" ? "" : "so far";
  }
  function list(elementId, rows, item) {
    document.getElementById(elementId).innerHTML = rows.map(item).join("") || "<li>None.</li>";
  }
  function reload() {
    fetch("/api/batches/" + id + "/", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (b) {
        best = -1; show(b.progress); failed = b.progress.failed;
        list("batch-failures", b.failures, function (f) {
          return "<li>" + esc(f.file) + " (" + esc(f.condition) + "): " + esc(f.reason) + "</li>"; });
        list("batch-duplicates", b.duplicate_files, function (d) {
          return "<li>" + esc(d.file) + ": already stored" + (d.stored_as ? " as " + esc(d.stored_as) : "") +
            ", image " + d.image + ' of <a href="/studies/' + d.study + '/">study ' + d.study + "</a>" +
            (d.accession ? " (accession " + esc(d.accession) + ")" : "") + "</li>"; });
      });
  }
  window.radtriageLive("/ws/batches/" + id + "/", function (event) {
    if (event.type !== "batch") return;
    show(event.progress);
    if (event.progress.state === "done" || event.progress.failed !== failed) reload();
  }, reload);
  // The time left is re-measured while no job ends (a stalled worker makes it grow).
  setInterval(function () { if (state !== "done" && !document.hidden) reload(); }, 30000);
})();
