// Report page: save the draft, sign it (after a confirmation), then reload to show the versions.
"use strict";
(function () {
  const editor = document.getElementById("report-editor");
  if (!editor) return;
  const takeOver = document.getElementById("take-over");
  if (takeOver) {
    // A colleague holds the study or wrote its draft: taking it over is explicit and recorded.
    takeOver.addEventListener("click", async function () {
      const reason = window.prompt("Take this study over from " + takeOver.dataset.holder +
                                   "? Its unsigned draft becomes yours to continue. Reason (optional):", "");
      if (reason === null) return;
      const response = await fetch("/api/studies/" + editor.dataset.studyId + "/take-over/", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken()},
        body: JSON.stringify({reason: reason}),
      });
      if (response.ok) { window.location.reload(); return; }
      const data = await response.json().catch(() => ({}));
      const message = document.getElementById("report-message");
      message.textContent = data.error || data.detail || ("Refused (HTTP " + response.status + ").");
      message.className = "error";
    });
  }
  if (editor.dataset.canEdit !== "1") return;
  const studyId = editor.dataset.studyId;
  const message = document.getElementById("report-message");
  const findings = document.getElementById("findings");
  const signButton = document.getElementById("sign-report");

  function csrfToken() {
    const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }
  async function send(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken()},
      body: body === undefined ? "{}" : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const fieldError = Object.values(data).find(Array.isArray);
      const detail = data.error || data.detail || (fieldError && fieldError[0]) || response.statusText;
      throw new Error(detail);
    }
    return data;
  }
  function say(words, isError) {
    message.textContent = words;
    message.className = isError ? "error" : "ok";
  }
  let draftId = null;

  // The report's text fields, as the API and the page name them.
  const FIELDS = {clinical_information: "Clinical information", findings: "Findings", impression: "Impression"};
  // The draft as on the screen: its text, and the critical result with its communication.
  const critical = document.getElementById("critical-result");
  function draftBody() {
    const body = {};
    Object.keys(FIELDS).forEach(function (name) { body[name] = document.getElementById(name).value; });
    if (!critical) return body;
    const field = function (name) { return critical.querySelector("[name=" + name + "]"); };
    const toldAt = field("critical_told_at").value;
    body.critical_finding = field("critical_finding").value;
    body.critical_told_to = field("critical_told_to").value;
    body.critical_told_how = field("critical_told_how").value;
    body.critical_told_at = toldAt ? new Date(toldAt).toISOString() : null;
    body.critical_acknowledged = field("critical_acknowledged").checked;
    return body;
  }
  // One click puts the AI's current results into the findings, each with its model.
  const insertAi = document.getElementById("insert-ai");
  if (insertAi) {
    insertAi.addEventListener("click", function () {
      const lines = insertAi.dataset.text;
      const at = findings.selectionStart != null ? findings.selectionStart : findings.value.length;
      findings.value = findings.value.slice(0, at) + (at && findings.value[at - 1] !== "\n" ? "\n" : "") + lines + "\n" + findings.value.slice(at);
      findings.focus();
    });
  }

  // A template fills the empty fields (the server does, and records which template); text
  // already written is replaced only when the radiologist says so.
  const templateChoice = document.getElementById("template-choice");
  if (templateChoice) {
    document.getElementById("apply-template").addEventListener("click", async function () {
      const option = templateChoice.selectedOptions[0];
      if (!option || !option.value) { say("Choose a template first.", true); return; }
      const written = option.dataset.fills.split(" ").filter(function (name) {
        return name && document.getElementById(name).value.trim();
      });
      let replace = false;
      if (written.length) {
        replace = window.confirm("“" + option.textContent + "” has text for " +
          written.map(function (name) { return FIELDS[name]; }).join(", ") +
          ", where you have written already. Replace your text with the template's?\n\n" +
          "Cancel keeps your text and fills only the empty fields.");
      }
      const body = draftBody();
      body.template = Number(option.value);
      body.template_replace = replace;
      say("Applying…");
      try {
        const report = await send("/api/studies/" + studyId + "/reports/", body);
        Object.keys(FIELDS).forEach(function (name) { document.getElementById(name).value = report[name]; });
        draftId = report.id;
        signButton.disabled = false;
        say("Template “" + report.template_name + "” applied; draft version " + report.version + " saved.");
      } catch (error) { say("Not applied: " + error.message, true); }
    });
  }

  document.getElementById("save-draft").addEventListener("click", async function () {
    say("Saving…");
    try {
      const report = await send("/api/studies/" + studyId + "/reports/", draftBody());
      draftId = report.id;
      signButton.disabled = false;
      say("Draft version " + report.version + " saved.");
    } catch (error) { say("Not saved: " + error.message, true); }
  });

  signButton.addEventListener("click", async function () {
    if (!window.confirm("Sign this report? A signed report cannot be changed; later changes are addenda.")) return;
    say("Signing…");
    try {
      // Sign exactly what is on the screen: save it first.
      const draft = await send("/api/studies/" + studyId + "/reports/", draftBody());
      draftId = draft.id;
      const report = await send("/api/reports/" + draftId + "/sign/");
      say("Version " + report.version + " signed.");
      window.location.reload();
    } catch (error) { say("Not signed: " + error.message, true); }
  });
})();
