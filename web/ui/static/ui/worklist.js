// Worklist: any analysis event re-reads /api/studies/ (order changes when a study is flagged).
"use strict";
(function () {
  const esc = window.radtriageEscape;
  const body = document.getElementById("worklist-body");
  const labels = {received: "Received", analysing: "AI analysing", ai_complete: "AI complete",
                  in_review: "In review", reported: "Reported"};
  const prioClass = {"STAT": 1, "Urgent": 2, "Routine": 3};
  let timer = null;

  function row(s) {
    const name = s.patient.display_name;
    return '<tr data-study-id="' + s.id + '" class="' + (s.ai_flagged ? "flagged" : "") + '">' +
      '<td><span class="prio prio-' + prioClass[s.priority] + '">' + esc(s.priority) + "</span></td>" +
      "<td>" + (s.ai_flagged ? '<span class="badge flag">AI flag</span>' : "") + "</td>" +
      '<td><a href="/studies/' + s.id + '/">' + esc(name) + "</a> <small>" + esc(s.patient.patient_id) + "</small></td>" +
      "<td>" + esc(s.accession_number || "—") + "</td><td>" + esc(s.body_part || "—") + "</td>" +
      "<td>" + esc(s.study_date || "") + "</td>" +
      '<td><span class="badge state-' + esc(s.status) + '">' + esc(labels[s.status] || s.status) + "</span></td>" +
      "<td>" + (s.pending_count ? '<span class="badge state-running">' + s.pending_count + " pending</span>" : "") +
      (s.failed_count ? ' <span class="badge state-failed">' + s.failed_count + " failed</span>" : "") + "</td></tr>";
  }
  function refresh() {
    fetch("/api/studies/?limit=200", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (page) {
        body.innerHTML = page.results.length ? page.results.map(row).join("") :
          '<tr class="empty"><td colspan="8">No studies yet. Upload an X-ray to start.</td></tr>';
      });
  }
  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 250); }
  window.radtriageLive("/ws/worklist/", soon, refresh);

  const form = document.getElementById("upload-form");
  if (form) form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const message = document.getElementById("upload-message");
    message.textContent = "Uploading…";
    fetch("/api/uploads/", {method: "POST", body: new FormData(form), credentials: "same-origin",
                            headers: {"X-CSRFToken": window.radtriageCsrf()}})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        message.textContent = res[0] < 300 ? "Uploaded; analyses queued." : (res[1].error || "Upload failed.");
        if (res[0] < 300) { form.reset(); refresh(); }
      });
  });
})();
