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
    const batch = new URLSearchParams(location.search).get("batch");
    fetch("/api/studies/?limit=200" + (batch ? "&batch=" + encodeURIComponent(batch) : ""),
          {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (page) {
        body.innerHTML = page.results.length ? page.results.map(row).join("") :
          '<tr class="empty"><td colspan="8">No studies yet. Upload an X-ray to start.</td></tr>';
      });
  }
  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 250); }
  window.radtriageLive("/ws/worklist/", soon, refresh);

  // Upload: one file goes to /api/uploads/ (interactive queue); several go to the bulk endpoint
  // in requests of at most BATCH_FILES files, at most IN_FLIGHT requests at a time.
  const BATCH_FILES = 16, IN_FLIGHT = 2;
  const form = document.getElementById("upload-form");
  if (!form) return;
  const fileInput = form.querySelector("input[type=file]");
  const button = form.querySelector("button[type=submit]");
  const message = document.getElementById("upload-message");
  const statusBox = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const count = document.getElementById("upload-count");
  const errorList = document.getElementById("upload-errors");

  function resetReport() {
    statusBox.hidden = true; progress.max = 1; progress.value = 0; count.textContent = "";
    errorList.hidden = true; errorList.innerHTML = "";
  }

  // The first readable message of an error body: {"error": "..."} or DRF field errors.
  function errorText(body, httpStatus) {
    function first(d) {
      if (d == null) return "";
      if (typeof d === "string") return d;
      if (Array.isArray(d)) return d.length ? first(d[0]) : "";
      if (typeof d === "object") {
        for (const key of Object.keys(d)) {
          const m = first(d[key]);
          if (m) return key === "detail" || key === "non_field_errors" ? m : key + ": " + m;
        }
      }
      return "";
    }
    const text = body && (body.error || first(body));
    return text || "Upload failed (server answered HTTP " + httpStatus + ").";
  }

  function uploadOne() {
    message.textContent = "Uploading…";
    button.disabled = true;
    fetch("/api/uploads/", {method: "POST", body: new FormData(form), credentials: "same-origin",
                            headers: {"X-CSRFToken": window.radtriageCsrf()}})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        message.textContent = res[0] < 300 ? "Uploaded; analyses queued." : (res[1].error || "Upload failed.");
        if (res[0] < 300) { form.reset(); refresh(); }
      })
      .catch(function () { message.textContent = "Upload failed: the server could not be reached."; })
      .finally(function () { button.disabled = false; });
  }

  function uploadMany(files) {
    const fields = [];
    new FormData(form).forEach(function (value, name) {
      if (name !== fileInput.name && name !== "csrfmiddlewaretoken") fields.push([name, value]);
    });
    const chunks = [];
    for (let i = 0; i < files.length; i += BATCH_FILES) chunks.push(files.slice(i, i + BATCH_FILES));
    const totalBytes = files.reduce(function (n, f) { return n + f.size; }, 0);
    const sentBytes = chunks.map(function () { return 0; });
    const outcomes = new Array(chunks.length);  // per chunk, in the order sent
    let next = 0, running = 0, filesDone = 0;

    button.disabled = true;
    message.textContent = "Uploading " + files.length + " files…";
    statusBox.hidden = false;
    progress.max = totalBytes || 1;
    progress.value = 0;
    function showProgress() {
      const sent = sentBytes.reduce(function (a, b) { return a + b; }, 0);
      progress.value = totalBytes ? Math.min(sent, totalBytes) : (filesDone === files.length ? 1 : 0);
      count.textContent = "Uploaded " + filesDone + " of " + files.length + " files" +
        (filesDone === files.length ? "." : "…");
    }
    showProgress();

    function refuseAll(chunk, reason) {
      return chunk.map(function (f) { return {filename: f.name, status: "rejected", error: reason}; });
    }

    function send(index) {
      const chunk = chunks[index];
      const chunkBytes = chunk.reduce(function (n, f) { return n + f.size; }, 0);
      const data = new FormData();
      fields.forEach(function (kv) { data.append(kv[0], kv[1]); });
      chunk.forEach(function (f) { data.append("files", f, f.name); });
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/uploads/batch/");
      xhr.setRequestHeader("X-CSRFToken", window.radtriageCsrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (ev) {
        // The request body also holds the multipart framing: scale to the files' own bytes.
        if (ev.lengthComputable && ev.total) {
          sentBytes[index] = Math.round(chunkBytes * ev.loaded / ev.total);
          showProgress();
        }
      };
      function finish(results) {
        outcomes[index] = results;
        sentBytes[index] = chunkBytes;
        filesDone += chunk.length;
        running -= 1;
        showProgress();
        pump();
      }
      xhr.onload = function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (body && Array.isArray(body.results) && [200, 201, 400].indexOf(xhr.status) >= 0) {
          finish(body.results);
        } else {
          finish(refuseAll(chunk, errorText(body, xhr.status)));
        }
      };
      xhr.onerror = function () { finish(refuseAll(chunk, "Network error: the server could not be reached.")); };
      xhr.ontimeout = function () { finish(refuseAll(chunk, "The server took too long to answer.")); };
      xhr.onabort = function () { finish(refuseAll(chunk, "The upload was interrupted.")); };
      xhr.send(data);
    }

    function pump() {
      while (running < IN_FLIGHT && next < chunks.length) { running += 1; send(next++); }
      if (running === 0 && next === chunks.length) done();
    }

    function done() {
      const results = [].concat.apply([], outcomes);
      const tally = {created: 0, duplicate: 0, rejected: 0};
      results.forEach(function (r) { tally[r.status] = (tally[r.status] || 0) + 1; });
      message.textContent = tally.created + " stored, " + tally.duplicate + " already there, " +
        tally.rejected + " refused";
      const refused = results.filter(function (r) { return r.status === "rejected"; });
      errorList.innerHTML = refused.map(function (r) {
        return "<li><strong>" + esc(r.filename) + "</strong>: " + esc(r.error || "refused") + "</li>";
      }).join("");
      errorList.hidden = !refused.length;
      button.disabled = false;
      if (!refused.length) form.reset();
      if (tally.created) refresh();
    }

    pump();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const files = Array.prototype.slice.call(fileInput.files || []);
    resetReport();
    if (files.length > 1) uploadMany(files); else uploadOne();
  });
})();
