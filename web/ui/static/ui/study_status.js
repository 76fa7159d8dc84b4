// The study page's claim / release / mark-reviewed bar. After an action the page reloads, so
// the status and the buttons are drawn by the server only (ui/_study_status.html).
"use strict";
(function () {
  const bar = document.getElementById("study-status-bar");
  if (!bar) return;
  const message = bar.querySelector(".study-status-message");
  bar.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    button.disabled = true;
    fetch("/api/studies/" + bar.dataset.studyId + "/" + button.dataset.action + "/", {
      method: "POST", credentials: "same-origin", headers: {"X-CSRFToken": window.radtriageCsrf()},
    }).then(function (r) {
      if (r.ok) { location.reload(); return; }
      return r.json().catch(function () { return {}; }).then(function (body) {
        message.textContent = body.error || body.detail || ("Refused (HTTP " + r.status + ").");
        message.className = "study-status-message error";
        button.disabled = false;
      });
    });
  });
})();
