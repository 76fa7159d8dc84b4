// Upload on the worklist. DICOM files carry their own patient: one goes to /api/uploads/,
// several to the bulk endpoint in requests of at most BATCH_FILES. A PNG/JPEG has its own
// patient fields (typed per file, or read from a CSV), so each goes on its own to /api/uploads/.
// What the page says afterwards is the server's own account of each file (its `outcome`).
"use strict";
(function () {
  const BATCH_FILES = 16, IN_FLIGHT = 2;
  const esc = window.radtriageEscape;
  const form = document.getElementById("upload-form");
  if (!form) return;
  // The form is a drawer over the worklist: × or Esc folds it away, keeping what was chosen.
  const drawer = form.closest("details");
  const close = function () { if (drawer) drawer.open = false; };
  form.querySelector(".drawer-close").addEventListener("click", close);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && drawer && drawer.open) close(); });
  const fileInput = form.querySelector("input[name=file]");
  const manifestInput = form.querySelector("input[name=manifest]");
  const fileTable = document.getElementById("upload-files");
  const bodyPartOptions = document.getElementById("body-part-options").innerHTML;
  const button = form.querySelector("button[type=submit]");
  const message = document.getElementById("upload-message");
  const statusBox = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const count = document.getElementById("upload-count");
  const resultList = document.getElementById("upload-results");
  const errorList = document.getElementById("upload-errors");
  const PER_FILE = ["patient_id", "patient_name", "birth_date", "sex", "body_part", "accession_number"];

  function isDicom(file) {
    return !/\.(png|jpe?g)$/i.test(file.name) && !/^image\/(png|jpeg)$/.test(file.type);
  }
  function files() { return Array.prototype.slice.call(fileInput.files || []); }

  // One row per file: PNG/JPEG get their patient fields and a body-region choice.
  function drawFileTable() {
    const list = files();
    fileTable.hidden = !list.length;
    fileTable.querySelector("tbody").innerHTML = list.map(function (f, i) {
      if (isDicom(f)) {
        return '<tr data-index="' + i + '"><td>' + esc(f.name) + '</td><td colspan="5"><small>DICOM: ' +
          "patient and body part from the file's header</small></td></tr>";
      }
      const label = function (what) { return ' aria-label="' + esc(what + " for " + f.name) + '"'; };
      return '<tr data-index="' + i + '" data-filename="' + esc(f.name) + '"><td>' + esc(f.name) + "</td>" +
        '<td><input name="patient_id"' + label("Patient ID") + "></td>" +
        '<td><input name="patient_name" placeholder="Family^Given"' + label("Name") + "></td>" +
        '<td><input name="birth_date" type="date"' + label("Birth date") + "></td>" +
        '<td><select name="sex"' + label("Sex") + '><option value=""></option><option>F</option><option>M</option><option>O</option></select></td>' +
        '<td><select name="body_part"' + label("Body region") + ">" + bodyPartOptions + "</select>" +
        '<input type="hidden" name="accession_number"></td></tr>';
    }).join("");
  }
  // The recogniser proposes each PNG/JPEG's body region (nothing is stored); the choice stays
  // the uploader's: a region already chosen is never overwritten.
  function proposeBodyParts() {
    files().forEach(function (f, i) {
      if (isDicom(f)) return;
      const data = new FormData();
      data.append("file", f, f.name);
      fetch("/api/uploads/recognise/", {method: "POST", body: data, credentials: "same-origin",
                                         headers: {"X-CSRFToken": window.radtriageCsrf()}})
        .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
        .then(function (answer) {
          const row = fileTable.querySelector('tr[data-index="' + i + '"]');
          if (!row || files()[i] !== f) return;  // the selection changed meanwhile
          const select = row.querySelector("select[name=body_part]");
          const note = document.createElement("small");
          note.className = "recognised";
          if (!answer.ok) {
            note.textContent = " " + (answer.body.error || "could not be read");
            note.classList.add("error");
          } else {
            const proposal = answer.body;
            note.textContent = " seen as: " + proposal.description;
            if (proposal.body_part && select && !select.value &&
                select.querySelector('option[value="' + proposal.body_part + '"]')) {
              select.value = proposal.body_part;
              select.dataset.proposed = proposal.body_part;
            }
          }
          if (select) select.insertAdjacentElement("afterend", note);
        })
        .catch(function () { /* the upload itself still recognises the image */ });
    });
  }
  fileInput.addEventListener("change", function () { drawFileTable(); proposeBodyParts(); });

  // CSV beside the images: filename,patient_id,patient_name,birth_date,sex,body_part,accession_number
  function parseCsv(text) {
    const rows = [];
    let row = [], cell = "", quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === ",") { row.push(cell); cell = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(cell); cell = ""; if (row.some(function (v) { return v.trim(); })) rows.push(row); row = [];
      } else cell += c;
    }
    row.push(cell); if (row.some(function (v) { return v.trim(); })) rows.push(row);
    return rows;
  }
  manifestInput.addEventListener("change", function () {
    const file = manifestInput.files && manifestInput.files[0];
    if (!file) return;
    file.text().then(function (text) {
      const rows = parseCsv(text);
      const head = (rows.shift() || []).map(function (h) { return h.trim().toLowerCase(); });
      const byName = {};
      rows.forEach(function (r) {
        const rec = {};
        head.forEach(function (h, i) { rec[h] = (r[i] || "").trim(); });
        if (rec.filename) byName[rec.filename] = rec;
      });
      let filled = 0;
      fileTable.querySelectorAll("tr[data-filename]").forEach(function (tr) {
        const rec = byName[tr.dataset.filename];
        if (!rec) return;
        filled++;
        PER_FILE.forEach(function (name) {
          const input = tr.querySelector("[name=" + name + "]");
          if (input && rec[name] !== undefined) input.value = name === "body_part" ? rec[name].toUpperCase() : rec[name];
        });
      });
      message.textContent = "CSV: patient fields filled for " + filled + " file(s).";
    });
  });

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

  // The single-file endpoint's answer in the bulk endpoint's shape (one item per file).
  function asItem(filename, body, httpStatus) {
    if (httpStatus < 300 && body && body.image) {
      return {filename: filename, status: body.created ? "created" : "duplicate", error: "",
              outcome: body.outcome, warnings: body.warnings || [], study_id: body.study.id,
              analyses: body.image.analyses || []};
    }
    const error = errorText(body, httpStatus);
    return {filename: filename, status: "rejected", error: error, outcome: "Refused: " + error, warnings: []};
  }

  function jobs(list) {
    const out = [];
    const common = {priority: form.elements.priority.value, queue: list.length > 1 ? "batch" : "interactive"};
    const dicoms = list.filter(isDicom);
    if (list.length === 1 && dicoms.length === 1) {
      out.push({url: "/api/uploads/", files: dicoms, fields: common, single: true});
    } else {
      for (let i = 0; i < dicoms.length; i += BATCH_FILES) {
        out.push({url: "/api/uploads/batch/", files: dicoms.slice(i, i + BATCH_FILES), fields: common});
      }
    }
    fileTable.querySelectorAll("tr[data-filename]").forEach(function (tr) {
      const fields = Object.assign({}, common);
      PER_FILE.forEach(function (name) {
        const input = tr.querySelector("[name=" + name + "]");
        if (input && input.value) fields[name] = input.value;
      });
      out.push({url: "/api/uploads/", files: [list[Number(tr.dataset.index)]], fields: fields, single: true});
    });
    return out;
  }

  function upload(list) {
    const work = jobs(list);
    const totalBytes = list.reduce(function (n, f) { return n + f.size; }, 0);
    const sentBytes = work.map(function () { return 0; });
    const outcomes = new Array(work.length);
    let next = 0, running = 0, filesDone = 0;
    button.disabled = true;
    message.textContent = list.length > 1 ? "Uploading " + list.length + " files…" : "Uploading…";
    statusBox.hidden = false;
    progress.max = totalBytes || 1;
    progress.value = 0;
    function showProgress() {
      const sent = sentBytes.reduce(function (a, b) { return a + b; }, 0);
      progress.value = totalBytes ? Math.min(sent, totalBytes) : (filesDone === list.length ? 1 : 0);
      count.textContent = "Uploaded " + filesDone + " of " + list.length + " files" +
        (filesDone === list.length ? "." : "…");
    }
    showProgress();

    function send(index) {
      const job = work[index];
      const jobBytes = job.files.reduce(function (n, f) { return n + f.size; }, 0);
      const data = new FormData();
      Object.keys(job.fields).forEach(function (k) { data.append(k, job.fields[k]); });
      job.files.forEach(function (f) { data.append(job.single ? "file" : "files", f, f.name); });
      const xhr = new XMLHttpRequest();
      xhr.open("POST", job.url);
      xhr.setRequestHeader("X-CSRFToken", window.radtriageCsrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (ev) {
        if (ev.lengthComputable && ev.total) {
          sentBytes[index] = Math.round(jobBytes * ev.loaded / ev.total);
          showProgress();
        }
      };
      function refuseAll(reason) {
        return job.files.map(function (f) {
          return {filename: f.name, status: "rejected", error: reason, outcome: "Refused: " + reason, warnings: []};
        });
      }
      function finish(items) {
        outcomes[index] = items;
        sentBytes[index] = jobBytes;
        filesDone += job.files.length;
        running -= 1;
        showProgress();
        pump();
      }
      xhr.onload = function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (job.single) finish([asItem(job.files[0].name, body, xhr.status)]);
        else if (body && Array.isArray(body.results) && [200, 201, 400].indexOf(xhr.status) >= 0) finish(body.results);
        else finish(refuseAll(errorText(body, xhr.status)));
      };
      xhr.onerror = function () { finish(refuseAll("Network error: the server could not be reached.")); };
      xhr.ontimeout = function () { finish(refuseAll("The server took too long to answer.")); };
      xhr.onabort = function () { finish(refuseAll("The upload was interrupted.")); };
      xhr.send(data);
    }
    function pump() {
      while (running < IN_FLIGHT && next < work.length) { running += 1; send(next++); }
      if (running === 0 && next === work.length) done();
    }
    function done() {
      const results = [].concat.apply([], outcomes);
      const tally = {created: 0, duplicate: 0, rejected: 0};
      results.forEach(function (r) { tally[r.status] = (tally[r.status] || 0) + 1; });
      if (results.length === 1) {
        const r = results[0];
        message.textContent = r.status === "rejected" ? r.error :
          r.status === "duplicate" ? "Already stored; nothing new uploaded." :
          (r.analyses && r.analyses.length ? "Uploaded; analyses queued." : "Uploaded; no analysis queued.");
      } else {
        message.textContent = tally.created + " stored, " + tally.duplicate + " already there, " +
          tally.rejected + " refused";
      }
      const kept = results.filter(function (r) { return r.status !== "rejected"; });
      resultList.innerHTML = kept.map(function (r) {
        return '<li class="outcome-' + esc(r.status) + '"><strong>' + esc(r.filename) + "</strong>: " +
          esc(r.outcome || r.status) +
          (r.study_id ? ' <a href="/studies/' + Number(r.study_id) + '/">Open study</a>' : "") +
          (r.warnings && r.warnings.length ? "<ul>" + r.warnings.map(function (w) {
            return '<li class="warning-text">' + esc(w) + "</li>"; }).join("") + "</ul>" : "") + "</li>";
      }).join("");
      resultList.hidden = !kept.length;
      const refused = results.filter(function (r) { return r.status === "rejected"; });
      errorList.innerHTML = refused.map(function (r) {
        return "<li><strong>" + esc(r.filename) + "</strong>: " + esc(r.error || "refused") + "</li>";
      }).join("");
      errorList.hidden = !refused.length;
      button.disabled = false;
      if (!refused.length) { form.reset(); drawFileTable(); }
      if (tally.created && window.radtriageRefreshWorklist) window.radtriageRefreshWorklist();
    }
    pump();
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    statusBox.hidden = true; progress.max = 1; progress.value = 0; count.textContent = "";
    resultList.hidden = true; resultList.innerHTML = ""; errorList.hidden = true; errorList.innerHTML = "";
    const list = files();
    if (list.length) upload(list);
  });
})();
