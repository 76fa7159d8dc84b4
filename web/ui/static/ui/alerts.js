// Alerts on the worklist: a STAT study, or an open study with an AI finding of the most urgent
// conditions (the server's rule: /api/studies/?alert=1), arriving while the page is open raises
// an alert here, and a desktop notification where the browser allows it, once per study: the
// studies already alerted are remembered in this browser (localStorage), and those present when
// the page first opens are taken as known (the list shows them at the top anyway).
"use strict";
(function () {
  const box = document.getElementById("alerts");
  if (!box) return;
  const esc = window.radtriageEscape;
  const key = "radtriage-alerted:" + (box.dataset.user || "");
  const known = new Set(JSON.parse(localStorage.getItem(key) || "[]"));
  let primed = known.size > 0;
  const permission = document.getElementById("alerts-permission");

  function remember() { localStorage.setItem(key, JSON.stringify(Array.from(known).slice(-500))); }
  function reason(study) {
    const r = study.strongest_result;
    if (study.priority === "STAT") return "STAT" + (r && r.finding ? " · AI flag: " + r.condition : "");
    return "AI flag: " + r.condition + (r.probability != null ? " " + r.probability.toFixed(2) : "");
  }
  function show(study) {
    const who = study.patient.display_name + " (" + study.patient.patient_id + ")";
    const item = document.createElement("div");
    item.className = "alert-item";
    item.dataset.studyId = study.id;
    item.innerHTML = '<strong class="alert-reason">' + esc(reason(study)) + "</strong> " + esc(who) +
      " · " + esc(study.body_part || "") + ' <a href="/studies/' + study.id + '/">Open</a>' +
      ' <button type="button" class="alert-dismiss" aria-label="Dismiss">×</button>';
    box.prepend(item);
    box.hidden = false;
    if ("Notification" in window && Notification.permission === "granted") {
      const note = new Notification("RadTriage: " + reason(study), {body: who, tag: "study-" + study.id});
      note.onclick = function () { window.focus(); location.href = "/studies/" + study.id + "/"; };
    }
  }
  function check() {
    return fetch("/api/studies/?alert=1&limit=50", {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (body) {
        for (const study of body.results) {
          if (known.has(study.id)) continue;
          known.add(study.id);
          if (primed) show(study);
        }
        primed = true;
        remember();
      })
      .catch(function () { /* the next event reads again */ });
  }
  box.addEventListener("click", function (e) {
    if (!e.target.classList.contains("alert-dismiss")) return;
    e.target.closest(".alert-item").remove();
    box.hidden = !box.querySelector(".alert-item");
  });
  if (permission && "Notification" in window && Notification.permission === "default") {
    permission.hidden = false;
    permission.addEventListener("click", function () {
      Notification.requestPermission().then(function () { permission.hidden = true; });
    });
  }
  window.radtriageCheckAlerts = check;
  check();
})();
