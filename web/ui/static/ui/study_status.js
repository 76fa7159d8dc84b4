// The study page's claim / release / take over / mark-reviewed bar. After an action the page
// reloads, so the status and the buttons are drawn by the server only (ui/_study_status.html).
"use strict";
(function () {
  const bar = document.getElementById("study-status-bar");
  if (!bar) return;
  const message = bar.querySelector(".study-status-message");
  bar.addEventListener("click", function (ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const body = {};
    if (button.dataset.action === "take-over") {
      // Taking a colleague's study is recorded with both names and the reason given.
      const reason = window.prompt("Take this study over from " + button.dataset.holder +
                                   "? Its unsigned draft becomes yours to continue. Reason (optional):", "");
      if (reason === null) return;
      body.reason = reason;
    }
    button.disabled = true;
    fetch("/api/studies/" + bar.dataset.studyId + "/" + button.dataset.action + "/", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": window.radtriageCsrf()},
      body: JSON.stringify(body),
    }).then(function (r) {
      if (r.ok) { location.reload(); return; }
      return r.json().catch(function () { return {}; }).then(function (answer) {
        message.textContent = answer.error || answer.detail || ("Refused (HTTP " + r.status + ").");
        message.className = "study-status-message error";
        button.disabled = false;
      });
    });
  });
})();
