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
  let best = -1;
  function show(p) {
    if (p.done < best) return;  // events from several workers may cross: never go backwards
    best = p.done;
    const bar = document.getElementById("batch-bar");
    bar.max = p.total || 1; bar.value = p.done;
    document.getElementById("batch-count").textContent =
      p.done + " / " + p.total + " analyses ended, " + p.failed + " failed (" + p.percent + "%)";
    document.getElementById("batch-eta").textContent =
      p.eta_seconds == null ? "" : "about " + Math.ceil(p.eta_seconds / 60) + " min left";
    document.getElementById("batch-state").textContent = p.state;
    document.getElementById("batch-note").textContent = p.note || "";
  }
  function reload() {
    fetch("/api/batches/" + id + "/", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (b) {
        best = -1; show(b.progress);
        const pos = Object.keys(b.positives).map(function (c) { return "<li>" + esc(c) + ": " + b.positives[c] + "</li>"; });
        document.getElementById("batch-positives").innerHTML = pos.join("") || "<li>None yet.</li>";
        const fails = b.failures.map(function (f) {
          return "<li>" + esc(f.file) + " (" + esc(f.condition) + "): " + esc(f.reason) + "</li>"; });
        document.getElementById("batch-failures").innerHTML = fails.join("") || "<li>None.</li>";
      });
  }
  window.radtriageLive("/ws/batches/" + id + "/", function (event) {
    if (event.type !== "batch") return;
    show(event.progress);
    if (event.progress.state === "done") reload();
  }, reload);
})();
