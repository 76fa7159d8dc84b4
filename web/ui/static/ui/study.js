// Study page. Every analysis card is drawn by the server (ui/_analysis.html); when a live event
// says a result changed, the page fetches that card again. Annotations live in viewer.js.
"use strict";
(function () {
  const studyId = window.RADTRIAGE_STUDY_ID;
  // Study.Status's labels (web/clinical/models.py): the state machine's states.
  const studyLabels = {received: "Received", analysing: "AI analysing",
                       scheduled: "AI scheduled (night window)", ai_complete: "AI complete",
                       in_review: "In review", reviewed: "Reviewed, no report here", reported: "Reported"};

  // Heat-map intensity: one slider for the page, remembered across studies. The colour layer's
  // opacity blends exactly like the server's overlay: (1 - alpha) * X-ray + alpha * colour.
  const slider = document.getElementById("heat-intensity");
  const sliderValue = document.getElementById("heat-intensity-value");
  function intensity() { return slider ? Number(slider.value) / 100 : 0.4; }
  window.radtriageHeatIntensity = intensity;
  function applyIntensity() {
    for (const layer of document.querySelectorAll(".heat-layer")) { layer.style.opacity = intensity(); }
    if (sliderValue) sliderValue.textContent = slider.value + " %";
    for (const viewer of Object.values(window.radtriageViewers || {})) viewer.redraw();
  }
  if (slider) {
    const saved = window.localStorage && localStorage.getItem("radtriage.heatIntensity");
    if (saved !== null && saved !== undefined) slider.value = saved;
    slider.addEventListener("input", function () {
      if (window.localStorage) localStorage.setItem("radtriage.heatIntensity", slider.value);
      applyIntensity();
    });
    applyIntensity();
  }

  function viewerOf(imageId) { return (window.radtriageViewers || {})[imageId]; }

  // The one way a card is (re)drawn: the server's partial.
  const loading = {}, stale = {};
  function refreshCard(analysisId, imageId) {
    // One fetch per card at a time; a change announced meanwhile fetches it once more after.
    if (loading[analysisId]) {
      stale[analysisId] = true;
      return loading[analysisId];
    }
    loading[analysisId] = fetch("/analyses/" + analysisId + "/card/", {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error("card " + r.status); return r.text(); })
      .then(function (html) {
        const holder = document.createElement("div");
        holder.innerHTML = html.trim();
        const card = holder.firstElementChild;
        const old = document.querySelector('.analysis[data-analysis-id="' + analysisId + '"]');
        if (old) {
          old.replaceWith(card);
        } else {
          const list = document.querySelector('section.image[data-image-id="' + (imageId || card.dataset.imageId) + '"] .analyses');
          if (!list) { location.reload(); return; }
          const empty = list.querySelector(".no-analysis");
          if (empty) empty.remove();
          list.appendChild(card);
        }
        for (const layer of card.querySelectorAll(".heat-layer")) layer.style.opacity = intensity();
        const viewer = viewerOf(card.dataset.imageId);
        if (viewer) viewer.refreshHeatSources();
      })
      // The card cannot be had (session ended, role withdrawn, server error): the whole page
      // again, which shows the login page or the reason rather than a stale card.
      .catch(function () { location.reload(); })
      .finally(function () {
        delete loading[analysisId];
        if (stale[analysisId]) { delete stale[analysisId]; refreshCard(analysisId, imageId); }
      });
    return loading[analysisId];
  }

  function showStatus(studyStatus) {
    const status = document.getElementById("study-status");
    if (status && studyStatus) {
      status.className = "badge state-" + studyStatus;
      status.textContent = studyLabels[studyStatus] || studyStatus;
    }
  }
  // A card is fetched again only when its state changed: an identical card is left alone (no
  // reload of its images, no flicker).
  function update(a) {
    const el = document.querySelector('.analysis[data-analysis-id="' + a.id + '"]');
    if (!el || el.dataset.state !== a.state) refreshCard(a.id, a.image_id || a.image);
  }
  // A verdict changes no state: the card is drawn again so a colleague's verdict shows at once.
  function onEvent(data) {
    if (data.event === "verdict") refreshCard(data.analysis.id, data.analysis.image_id || data.analysis.image);
    else update(data.analysis);
    showStatus(data.analysis.study_status);
  }
  // A person moved the study (claimed, released, took it over, reviewed, signed its report):
  // the status and the holder are redrawn; the bar's buttons come with the next load (the
  // server refuses, naming the holder, whatever a stale button asks).
  function onStudy(data) {
    showStatus(data.study.status);
    const bar = document.getElementById("study-status-bar");
    if (!bar) return;
    const label = bar.querySelector(".status-label");
    if (label) label.textContent = studyLabels[data.study.status] || data.study.status;
    const holder = bar.querySelector(".assignee");
    if (holder) holder.textContent = data.study.assigned_radiologist || "not claimed";
  }
  function onAnnotation(data) {
    const viewer = viewerOf(data.annotation.image);
    if (viewer) viewer.annotationEvent(data.event, data.annotation);
  }
  // On every (re)connect: bring each analysis and the annotations up to date from the API.
  function reconcile() {
    fetch("/api/studies/" + studyId + "/", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (study) {
        showStatus(study.status);
        for (const image of study.images) { for (const a of image.analyses) update(a); }
      });
    for (const viewer of Object.values(window.radtriageViewers || {})) viewer.loadAnnotations();
  }

  function sendJson(url, method, body) {
    return fetch(url, {method: method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": window.radtriageCsrf()},
      body: JSON.stringify(body)})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
          return data;
        });
      });
  }

  // The results panel folds away (the image takes the whole width) and comes back.
  document.addEventListener("click", function (e) {
    const button = e.target.closest(".fold-results");
    if (!button) return;
    const section = button.closest("section.image");
    const folded = section.classList.toggle("results-folded");
    button.setAttribute("aria-expanded", folded ? "false" : "true");
    button.textContent = folded ? "⇤ Results" : "Results ⇥";
  });
  // [ and ]: the previous and next study in the worklist's order (not while typing).
  document.addEventListener("keydown", function (e) {
    if (e.target.closest("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
    const link = document.getElementById(e.key === "]" ? "next-study" : e.key === "[" ? "previous-study" : "");
    if (link) { e.preventDefault(); location.href = link.href; }
  });
  // "Disagree" asks why (a required choice); another verdict has no reason.
  document.addEventListener("change", function (e) {
    if (e.target.name !== "verdict" || !e.target.closest(".verdict-form")) return;
    const why = e.target.closest(".verdict-form").querySelector(".verdict-reason");
    const disagree = e.target.value === "disagree";
    why.hidden = !disagree;
    why.querySelector("select").required = disagree;
  });
  document.addEventListener("submit", function (e) {
    const form = e.target;
    if (form.classList.contains("verdict-form")) {
      e.preventDefault();
      const card = form.closest(".analysis");
      const chosen = form.querySelector("input[name=verdict]:checked");
      sendJson(form.dataset.url, "PUT", {verdict: chosen ? chosen.value : "",
                                         reason: form.querySelector("select[name=reason]").value,
                                         comment: form.querySelector("input[name=comment]").value})
        .then(function () { return refreshCard(card.dataset.analysisId); })
        .catch(function (err) { form.querySelector(".verdict-message").textContent = err.message; });
    } else if (form.classList.contains("rerun-form")) {
      e.preventDefault();
      const message = form.querySelector(".rerun-message");
      sendJson(form.dataset.url, "POST", {conditions: [form.dataset.condition],
                                          model_id: form.querySelector("select[name=model_id]").value})
        .then(function (created) {
          message.textContent = "Queued.";
          for (const a of created) refreshCard(a.id, a.image);
        })
        .catch(function (err) { message.textContent = err.message; });
    }
  });
  document.addEventListener("click", function (e) {
    const button = e.target.closest("button.show-heat");
    if (!button) return;
    const viewer = viewerOf(button.closest(".analysis").dataset.imageId);
    if (viewer) viewer.showHeat(button.dataset.heatmapUrl);
  });

  window.radtriageLive("/ws/studies/" + studyId + "/", onEvent, reconcile,
                       {annotation: onAnnotation, study: onStudy});
})();
