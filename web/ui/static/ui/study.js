// Study page: redraw one analysis from the event payload; unknown analyses -> reload the page.
"use strict";
(function () {
  const esc = window.radtriageEscape;
  const studyId = window.RADTRIAGE_STUDY_ID;
  const stateLabels = {queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed"};
  const studyLabels = {received: "Received", analysing: "AI analysing", ai_complete: "AI complete",
                       in_review: "In review", reported: "Reported"};
  function fixed(x, n) { return x == null ? "" : Number(x).toFixed(n); }

  // Heat-map intensity: one slider for the page, remembered across studies. The colour layer's
  // opacity blends exactly like the server's overlay: (1 - alpha) * X-ray + alpha * colour.
  const slider = document.getElementById("heat-intensity");
  const sliderValue = document.getElementById("heat-intensity-value");
  function intensity() { return slider ? Number(slider.value) / 100 : 0.4; }
  function applyIntensity() {
    for (const layer of document.querySelectorAll(".heat-layer")) { layer.style.opacity = intensity(); }
    if (sliderValue) sliderValue.textContent = slider.value + " %";
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

  function render(a) {
    let html = '<div class="head"><strong>' + esc(a.condition) + '</strong> <span class="badge state-' +
      esc(a.state) + '">' + esc(stateLabels[a.state] || a.state) + "</span></div>";
    if (a.state === "succeeded") {
      const notApplicable = a.applicable === false;
      for (const w of a.warnings || []) {
        html += '<p class="warning ' + esc(w.kind.replace(/_/g, "")) + '-warning" role="alert">' + esc(w.text) + "</p>";
      }
      if (notApplicable) {
        html += '<p class="result">No result: the model was not made for this image, so its output is not shown.</p>';
      } else if (!a.is_placeholder) {
        html += '<p class="result">Probability <b class="prob">' + fixed(a.probability, 3) + "</b> " +
          (a.is_finding ? '<span class="badge flag">AI flag</span> (at or above threshold ' + fixed(a.threshold, 2) + ")"
            : a.positive ? "at or above threshold " + fixed(a.threshold, 2) + ", not a flag (experimental)"
            : "below threshold " + fixed(a.threshold, 2)) + "</p>";
      }
      if (a.heatmap_raw_url && a.image_thumbnail_url && !notApplicable) {
        html += '<div class="overlay-view"><img class="xray-layer" alt="X-ray" src="' + esc(a.image_thumbnail_url) +
          '"><img class="heat-layer" alt="Grad-CAM heat map over the X-ray" style="opacity: ' + intensity() +
          '" src="' + esc(a.heatmap_url) + "?kind=color&v=" + esc(a.finished_at || "") + '"></div>';
      }
      if (a.heatmap_url && !notApplicable) {
        const gradcam = a.gradcam_method === "gradcam";
        html += '<p class="heatmap-links"><a class="heatmap" target="_blank" href="' + esc(a.heatmap_url) +
          '">Full-resolution overlay</a> · <small' + (gradcam ? "" : ' class="cam-fallback"') + ">" +
          (gradcam ? "Grad-CAM" : "Not Grad-CAM: " + esc(a.gradcam_method) + " map (fallback)") +
          (a.gradcam_layer ? " at " + esc(a.gradcam_layer) : "") + "</small></p>";
      }
    } else if (a.state === "failed") {
      html += '<p class="error">' + esc(a.error_message) + "</p>";
    }
    html += '<p class="model">Model <code>' + esc(a.model_id || "(active model)") + "</code>" +
      (a.model_sha256 ? ' · sha256 <code title="' + esc(a.model_sha256) + '">' + esc(a.model_sha256.slice(0, 12)) + "…</code>" : "") +
      "</p>";
    return html;
  }

  function show(a, studyStatus) {
    const el = document.querySelector('[data-analysis-id="' + a.id + '"]');
    if (!el) { location.reload(); return false; }
    el.className = "analysis state-" + a.state + (a.is_placeholder ? " placeholder" : "") +
      (a.is_finding ? " finding" : "") + (a.state === "succeeded" && a.applicable === false ? " not-applicable" : "");
    // Redraw only what changed: replacing an identical card would reload its images and flicker.
    const html = render(a);
    if (el.dataset.rendered !== html) {
      el.innerHTML = html;
      el.dataset.rendered = html;
    }
    const status = document.getElementById("study-status");
    if (status && studyStatus) {
      status.className = "badge state-" + studyStatus;
      status.textContent = studyLabels[studyStatus] || studyStatus;
    }
    return true;
  }
  function onEvent(data) { show(data.analysis, data.analysis.study_status); }
  // On every (re)connect: bring each analysis up to date from the API (same fields as events).
  function reconcile() {
    fetch("/api/studies/" + studyId + "/", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (study) {
        for (const image of study.images) {
          for (const a of image.analyses) { if (!show(a, study.status)) return; }
        }
      });
  }
  window.radtriageLive("/ws/studies/" + studyId + "/", onEvent, reconcile);
})();
