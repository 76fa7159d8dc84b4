// The study page's image viewer: the full-resolution X-ray on a canvas with zoom, pan and
// window/level, the Grad-CAM heat map drawn over it, and the team's annotations.
//
// DICOM pixels arrive as 16-bit codes packed in an RGB PNG (R = high byte, G = low byte;
// value = code * scale + offset, after the modality LUT), so the window is applied here to the
// real values, then the MONOCHROME1 inversion (DICOM order). PNG/JPEG arrive as stored.
// All shapes are in image pixel coordinates, so they stay put whatever the zoom.
"use strict";
(function () {
  const esc = window.radtriageEscape;
  const me = window.RADTRIAGE_USER;
  const KIND_LABELS = {rect: "rectangle", ellipse: "ellipse", arrow: "arrow", freehand: "freehand", text: "text", length: "length", angle: "angle"};
  const DRAW_TOOLS = ["rect", "ellipse", "arrow", "freehand", "text", "length", "angle"];
  const angleTool = window.radtriageAngle;  // angle.js
  const viewers = window.radtriageViewers = {};
  let active = null; // the viewer the keyboard drives: the last one used

  function sendJson(url, method, body) {
    return fetch(url, {method: method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": window.radtriageCsrf()},
      body: body === undefined ? undefined : JSON.stringify(body)})
      .then(function (r) {
        if (r.status === 204) return null;
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw new Error(data.error || data.detail || ("HTTP " + r.status));
          return data;
        });
      });
  }

  function Viewer(root) {
    const self = this;
    const imageId = root.dataset.imageId;
    const canReview = root.dataset.canReview === "1";
    const canvas = root.querySelector("canvas.viewer-canvas");
    const ctx = canvas.getContext("2d");
    const statusLine = root.querySelector(".viewer-status");
    const readout = root.querySelector(".wl-readout");
    const heatToggle = root.querySelector(".heat-toggle");
    const heatSource = root.querySelector(".heat-source");
    const presetSelect = root.querySelector(".wl-preset");
    const noteInput = root.querySelector(".note-input");
    const list = root.querySelector(".annotation-list");
    const section = root.closest("section.image");

    let meta = null, width = 0, height = 0;
    let codes = null, rgb = null;           // source pixels: 16-bit codes or 8-bit RGBA
    const plane = document.createElement("canvas"); // the windowed image at full resolution
    let planeData = null;
    let win = {center: 0, width: 1}, invert = false;
    // The view: the image's centre at (cx, cy) on the canvas, `scale` canvas pixels per image
    // pixel, turned `rot` quarter turns clockwise after an optional left-right flip.
    let scale = 1, cx = 0, cy = 0, rot = 0, flip = false;
    let fitted = true;  // the view is the fitted one: a new canvas size refits it
    let magnifier = false, pointer = null;  // the magnifier (G) follows the pointer
    const MAGNIFY = 3, LENS = 90;  // times the view's zoom; the lens radius in screen pixels
    let tool = "pan";
    const heat = new Image();
    let heatUrl = null, heatReady = false;
    const annotations = new Map();
    let draft = null, drag = null, selected = null;

    // ------------------------------------------------------------------ pixels and window
    function load() {
      fetch(root.dataset.displayUrl, {credentials: "same-origin"})
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (m) {
          meta = m; width = m.width; height = m.height;
          const img = new Image();
          img.src = m.pixels_url;
          return img.decode().then(function () { return img; });
        })
        .then(function (img) {
          width = img.naturalWidth; height = img.naturalHeight;
          plane.width = width; plane.height = height;
          const pctx = plane.getContext("2d", {willReadFrequently: true});
          pctx.drawImage(img, 0, 0);
          const source = pctx.getImageData(0, 0, width, height).data;
          if (meta.encoding === "rg16") {
            codes = new Uint16Array(width * height);
            for (let i = 0, j = 0; i < codes.length; i++, j += 4) codes[i] = (source[j] << 8) | source[j + 1];
          } else {
            rgb = new Uint8ClampedArray(source);
          }
          planeData = pctx.createImageData(width, height);
          invert = !!meta.invert;
          setWindow(meta.window.center, meta.window.width);
          fit();
          statusLine.textContent = "";
          canvas.dataset.ready = "1";
        })
        .catch(function (err) { statusLine.textContent = "The image cannot be shown: " + err.message; });
    }

    // DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window, like core.imaging.window_linear.
    function windowLut(size, valueOf) {
      const lut = new Uint8ClampedArray(size);
      const c = win.center, w = Math.max(win.width, 1);
      for (let code = 0; code < size; code++) {
        const v = valueOf(code);
        let y = w <= 1 ? (v < c - 0.5 ? 0 : 255) : ((v - (c - 0.5)) / (w - 1) + 0.5) * 255;
        y = Math.round(Math.min(255, Math.max(0, y)));
        lut[code] = invert ? 255 - y : y;
      }
      return lut;
    }
    function applyWindow() {
      if (!planeData) return;
      const out = planeData.data;
      if (codes) {
        const lut = windowLut(65536, function (code) { return code * meta.scale + meta.offset; });
        for (let i = 0, j = 0; i < codes.length; i++, j += 4) {
          const y = lut[codes[i]];
          out[j] = out[j + 1] = out[j + 2] = y; out[j + 3] = 255;
        }
      } else {
        const lut = windowLut(256, function (v) { return v; });
        for (let j = 0; j < out.length; j += 4) {
          out[j] = lut[rgb[j]]; out[j + 1] = lut[rgb[j + 1]]; out[j + 2] = lut[rgb[j + 2]]; out[j + 3] = 255;
        }
      }
      plane.getContext("2d").putImageData(planeData, 0, 0);
    }
    function setWindow(center, w) {
      win = {center: center, width: Math.max(1, w)};
      applyWindow();
      const digits = Math.abs(win.width) < 10 ? 2 : 0;
      readout.textContent = "W " + win.width.toFixed(digits) + " / L " + win.center.toFixed(digits);
      canvas.dataset.window = win.center.toFixed(3) + "," + win.width.toFixed(3);
      canvas.dataset.invert = invert ? "1" : "0";
      redraw();
    }
    function preset(name) {
      if (!meta) return;
      const range = meta.range;
      if (name === "full") setWindow((range.min + range.max) / 2, range.max - range.min + 1);
      else if (name === "auto" && meta.auto_window) setWindow(meta.auto_window.center, meta.auto_window.width);
      else if (name === "auto") setWindow((range.min + range.max) / 2, (range.max - range.min) / 2);
      else setWindow(meta.window.center, meta.window.width);
      presetSelect.value = name;
    }

    // ------------------------------------------------------------------ view transform
    function size() {
      const ratio = window.devicePixelRatio || 1;
      const w = canvas.clientWidth, h = canvas.clientHeight;
      if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
        canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
      }
      return {w: w, h: h, ratio: ratio};
    }
    function fit() {
      const s = size();
      if (!width) return;
      const turned = rot % 2 === 1;
      scale = Math.min(s.w / (turned ? height : width), s.h / (turned ? width : height));
      cx = s.w / 2; cy = s.h / 2;
      fitted = true;
      redraw();
    }
    function zoomAt(factor, x, y) {
      const next = Math.min(40, Math.max(0.02, scale * factor));
      cx = x - (next / scale) * (x - cx); cy = y - (next / scale) * (y - cy);
      scale = next;
      fitted = false;
      redraw();
    }
    function zoomCentre(factor) { const s = size(); zoomAt(factor, s.w / 2, s.h / 2); }
    function toImage(e) {
      const box = canvas.getBoundingClientRect();
      const x = e.clientX - box.left, y = e.clientY - box.top;
      const o = orient(), dx = (x - cx) / scale, dy = (y - cy) / scale;
      return {x: x, y: y, ix: width / 2 + o[0] * dx + o[2] * dy, iy: height / 2 + o[1] * dx + o[3] * dy};
    }
    // The orientation as a 2x2 matrix [o00, o01, o10, o11]: image -> view directions.
    function orient() {
      const c = [1, 0, -1, 0][rot], sn = [0, 1, 0, -1][rot], f = flip ? -1 : 1;
      return [c * f, -sn, sn * f, c];
    }
    // Where image pixel (0, 0) lands on the canvas: the translation of the view.
    function origin() {
      const o = orient();
      return [cx - scale * (o[0] * width / 2 + o[1] * height / 2), cy - scale * (o[2] * width / 2 + o[3] * height / 2)];
    }
    // Text is written upright on the screen, whatever the orientation: at the view position of
    // image point (ix, iy), shifted by (dx, dy) screen pixels.
    function label(text, ix, iy, px, dx, dy, outline) {
      const o = orient(), e = origin(), r = window.devicePixelRatio || 1;
      const vx = e[0] + scale * (o[0] * ix + o[1] * iy), vy = e[1] + scale * (o[2] * ix + o[3] * iy);
      ctx.save();
      ctx.setTransform(r, 0, 0, r, 0, 0);
      ctx.font = px + "px system-ui, sans-serif";
      if (outline) { ctx.strokeStyle = "#000"; ctx.lineWidth = 3; ctx.strokeText(text, vx + dx, vy + dy); }
      ctx.fillText(text, vx + dx, vy + dy);
      ctx.restore();
    }

    // ------------------------------------------------------------------ drawing
    function drawShape(shape) {
      ctx.beginPath();
      if (shape.type === "rect") {
        ctx.rect(shape.x, shape.y, shape.w, shape.h);
      } else if (shape.type === "ellipse") {
        ctx.ellipse(shape.x + shape.w / 2, shape.y + shape.h / 2, Math.abs(shape.w / 2), Math.abs(shape.h / 2), 0, 0, 2 * Math.PI);
      } else if (shape.type === "arrow") {
        const angle = Math.atan2(shape.y2 - shape.y1, shape.x2 - shape.x1), head = 14 / scale;
        ctx.moveTo(shape.x1, shape.y1); ctx.lineTo(shape.x2, shape.y2);
        ctx.moveTo(shape.x2, shape.y2);
        ctx.lineTo(shape.x2 - head * Math.cos(angle - 0.45), shape.y2 - head * Math.sin(angle - 0.45));
        ctx.moveTo(shape.x2, shape.y2);
        ctx.lineTo(shape.x2 - head * Math.cos(angle + 0.45), shape.y2 - head * Math.sin(angle + 0.45));
      } else if (shape.type === "length") {
        // The measured line with a tick across each end, and its length beside the far end.
        const angle = Math.atan2(shape.y2 - shape.y1, shape.x2 - shape.x1), tick = 7 / scale;
        const nx = -Math.sin(angle) * tick, ny = Math.cos(angle) * tick;
        ctx.moveTo(shape.x1, shape.y1); ctx.lineTo(shape.x2, shape.y2);
        ctx.moveTo(shape.x1 - nx, shape.y1 - ny); ctx.lineTo(shape.x1 + nx, shape.y1 + ny);
        ctx.moveTo(shape.x2 - nx, shape.y2 - ny); ctx.lineTo(shape.x2 + nx, shape.y2 + ny);
        ctx.stroke();
        label(lengthText(shape), shape.x2, shape.y2, "bold 14", 8, 4, true);  // dark edge: legible over the heat map
        return;
      } else if (shape.type === "freehand") {
        shape.points.forEach(function (p, i) { if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); });
      } else if (shape.type === "text") {
        label(shape.text || "", shape.x, shape.y, "16", 0, 0, false);
        return;
      } else if (shape.type === "angle") {
        angleTool.draw(ctx, shape, scale, meta && meta.pixel_spacing, label);
        return;
      }
      ctx.stroke();
    }
    // A length as web.clinical.review.measure states it: millimetres from the header's pixel
    // size (ImagerPixelSpacing: at the detector), pixels and "uncalibrated" without one.
    function lengthText(shape) {
      const dx = shape.x2 - shape.x1, dy = shape.y2 - shape.y1;
      const spacing = meta && meta.pixel_spacing;
      if (!spacing) return Math.hypot(dx, dy).toFixed(1) + " px (uncalibrated)";
      const mm = Math.hypot(dx * spacing.col_mm, dy * spacing.row_mm);
      return mm.toFixed(1) + " mm" + (spacing.source === "ImagerPixelSpacing" ? " at the detector" : "");
    }
    function labelAt(shape) {
      if (shape.type === "arrow" || shape.type === "length") return [shape.x1, shape.y1];
      if (shape.type === "freehand" || shape.type === "angle") return shape.points[0];
      return [Math.min(shape.x, shape.x + (shape.w || 0)), Math.min(shape.y, shape.y + (shape.h || 0))];
    }
    function redraw() {
      const s = size();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      canvas.dataset.scale = scale.toFixed(4);
      const o = orient(), e = origin();
      canvas.dataset.pan = e[0].toFixed(1) + "," + e[1].toFixed(1);  // where image pixel (0, 0) is
      canvas.dataset.orientation = rot * 90 + (flip ? " flipped" : "");
      canvas.dataset.heat = heatToggle.checked && heatUrl ? "on" : "off";
      if (!planeData) return;
      const k = scale * s.ratio;
      ctx.setTransform(k * o[0], k * o[2], k * o[1], k * o[3], e[0] * s.ratio, e[1] * s.ratio);
      ctx.imageSmoothingEnabled = scale < 1;
      ctx.drawImage(plane, 0, 0);
      if (heatToggle.checked && heatUrl && heatReady) {
        // The model-resolution map stretched over the whole image: how core.overlay aligns it.
        const intensity = window.radtriageHeatIntensity ? window.radtriageHeatIntensity() : 0.4;
        ctx.globalAlpha = intensity;
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(heat, 0, 0, width, height);
        ctx.globalAlpha = 1;
        if (intensity > 0) drawRegion();  // faded out to 0 %: the X-ray alone, outline included
      }
      canvas.dataset.region = heatToggle.checked && heatReady && region && region.contour.length &&
        (!window.radtriageHeatIntensity || window.radtriageHeatIntensity() > 0) ? "on" : "off";
      ctx.lineWidth = 2 / scale;
      for (const a of annotations.values()) {
        const colour = a.id === selected ? "#ff6b6b" : a.author === me ? "#ffd43b" : "#74c0fc";
        ctx.strokeStyle = ctx.fillStyle = colour;
        for (const shape of a.shapes) drawShape(shape);
        if (a.shapes.length && a.shapes[0].type !== "text") {
          const at = labelAt(a.shapes[0]);
          label(a.author + (a.note ? ": " + a.note : ""), at[0], at[1], "12", 0, -4, false);
        }
      }
      // What is being measured, live, as drawn beside the shape (for assistive reading and tests).
      canvas.dataset.measuring = !draft ? "" : draft.type === "angle" ? angleTool.text(draft, meta.pixel_spacing)
        : draft.type === "length" ? lengthText(draft) : "";
      if (draft) {
        ctx.strokeStyle = ctx.fillStyle = "#ffd43b";
        ctx.setLineDash([6 / scale, 4 / scale]);
        drawShape(draft);
        ctx.setLineDash([]);
      }
      drawLens(s);
      canvas.dataset.magnifier = magnifier ? "on" : "off";
    }
    // The magnifier: a round lens at the pointer showing the image MAGNIFY times closer, in the
    // current window, orientation and heat map.
    function drawLens(s) {
      if (!magnifier || !pointer || !planeData) return;
      const o = orient(), k = scale * MAGNIFY, p = toImage(pointer);
      ctx.save();
      ctx.setTransform(s.ratio, 0, 0, s.ratio, 0, 0);
      ctx.beginPath();
      ctx.arc(pointer.x, pointer.y, LENS, 0, 2 * Math.PI);
      ctx.fillStyle = "#000";
      ctx.fill();
      ctx.clip();
      const ex = pointer.x - k * (o[0] * p.ix + o[1] * p.iy), ey = pointer.y - k * (o[2] * p.ix + o[3] * p.iy);
      ctx.setTransform(k * o[0] * s.ratio, k * o[2] * s.ratio, k * o[1] * s.ratio, k * o[3] * s.ratio, ex * s.ratio, ey * s.ratio);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(plane, 0, 0);
      if (heatToggle.checked && heatUrl && heatReady) {
        ctx.globalAlpha = window.radtriageHeatIntensity ? window.radtriageHeatIntensity() : 0.4;
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(heat, 0, 0, width, height);
        ctx.globalAlpha = 1;
      }
      ctx.restore();
      ctx.save();
      ctx.setTransform(s.ratio, 0, 0, s.ratio, 0, 0);
      ctx.beginPath();
      ctx.arc(pointer.x, pointer.y, LENS, 0, 2 * Math.PI);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.restore();
    }
    self.redraw = redraw;

    // ------------------------------------------------------------------ heat map
    heat.onload = function () { heatReady = true; redraw(); };
    // On a finding, the hot region as commercial tools mark it: its outline where the map
    // reaches half its peak and a box around it (server: core.overlay.hot_region).
    let region = null;
    const legend = root.querySelector(".heat-legend");
    function setHeat(url) {
      if (url === heatUrl) return;
      heatUrl = url; heatReady = false; region = null;
      if (url) heat.src = url;
      heatSource.value = url || "";
      const card = url && Array.from(section.querySelectorAll(".analysis[data-heatmap-url]"))
        .find(function (c) { return c.dataset.heatmapUrl === url; });
      if (card && card.classList.contains("finding")) {
        fetch(url.replace("kind=color", "kind=region"), {credentials: "same-origin"})
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (body) { if (heatUrl === url) { region = body; showLegend(); redraw(); } })
          .catch(function () { region = null; });
      }
      showLegend();
      redraw();
    }
    function showLegend() {
      if (!legend) return;
      legend.hidden = !heatUrl || !heatToggle.checked;
      legend.querySelector(".region-key").hidden = !(region && region.contour.length);
    }
    function drawRegion() {
      if (!region || !region.contour.length) return;
      ctx.lineWidth = 2.5 / scale;
      ctx.strokeStyle = "#fff";
      ctx.beginPath();
      region.contour.forEach(function (p, i) {
        const x = p[0] * width, y = p[1] * height;
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.closePath();
      ctx.stroke();
      const b = region.box;
      ctx.strokeStyle = "#ffd43b";
      ctx.setLineDash([8 / scale, 5 / scale]);
      ctx.strokeRect(b[0] * width, b[1] * height, (b[2] - b[0]) * width, (b[3] - b[1]) * height);
      ctx.setLineDash([]);
    }
    self.refreshHeatSources = function () {
      const cards = section.querySelectorAll(".analysis[data-heatmap-url]");
      const current = heatUrl;
      heatSource.innerHTML = "";
      let preferred = null;
      for (const card of cards) {
        const option = document.createElement("option");
        option.value = card.dataset.heatmapUrl;
        option.textContent = card.dataset.condition + " #" + card.dataset.analysisId +
          (card.dataset.placeholder ? " (placeholder: no diagnostic value)" : "");
        heatSource.appendChild(option);
        // A finding's map first, then any real model's; a placeholder's only when alone.
        const rank = function (c) { return c.classList.contains("finding") ? 2 : c.dataset.placeholder ? 0 : 1; };
        if (!preferred || rank(card) > rank(preferred)) preferred = card;
      }
      heatSource.disabled = heatToggle.disabled = !cards.length;
      const still = Array.from(cards).some(function (c) { return c.dataset.heatmapUrl === current; });
      setHeat(still ? current : preferred ? preferred.dataset.heatmapUrl : null);
    };
    self.showHeat = function (url) { heatToggle.checked = true; setHeat(url); canvas.focus(); active = self; };
    heatSource.addEventListener("change", function () { setHeat(heatSource.value); });
    heatToggle.addEventListener("change", function () { showLegend(); redraw(); });

    // ------------------------------------------------------------------ annotations
    function describe(a) {
      const measured = (a.measurements || []).slice();
      const missed = a.missed_condition ? "AI missed " + a.missed_condition + ": " : "";
      return missed + a.shapes.map(function (s, i) {
        if (s.type === "length") return "length " + (measured.length ? measured.shift().text : lengthText(s));
        if (s.type === "angle") return "angle " + (measured.length ? measured.shift().text : angleTool.text(s, meta && meta.pixel_spacing));
        return KIND_LABELS[s.type] || s.type;
      }).join(", ") || "note";
    }
    // Notes being edited, id -> text typed so far: a live event or a reload re-renders the
    // list, and must not throw away what the radiologist is typing.
    const editing = new Map();
    function renderList() {
      list.innerHTML = "";
      if (!annotations.size) { list.innerHTML = '<li class="empty">None yet.</li>'; return; }
      for (const a of annotations.values()) {
        const li = document.createElement("li");
        li.dataset.annotationId = a.id;
        li.className = "annotation" + (a.author === me ? " own" : "") + (a.id === selected ? " selected" : "");
        const mine = a.author === me && canReview;
        li.innerHTML = '<b class="author">' + esc(a.author) + '</b> · <span class="kind">' + esc(describe(a)) +
          '</span> <span class="note">' + esc(a.note) + "</span>" +
          (mine && !editing.has(a.id) ? ' <button type="button" class="edit">Edit note</button>' : "") +
          (mine ? ' <button type="button" class="delete">Delete</button>' : "");
        list.appendChild(li);
        if (mine && editing.has(a.id)) openEditor(li, a.id, editing.get(a.id));
      }
    }
    function openEditor(li, id, text) {
      const noteSpan = li.querySelector(".note");
      noteSpan.innerHTML = '<input class="edit-note" aria-label="Note" maxlength="2000"> <button type="button" class="save">Save</button>';
      const input = noteSpan.querySelector("input");
      input.value = text;
      editing.set(id, text);
      input.addEventListener("input", function () { editing.set(id, input.value); });
    }
    function upsert(a) { annotations.set(a.id, a); renderList(); redraw(); }
    self.loadAnnotations = function () {
      return fetch(root.dataset.annotationsUrl, {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (rows) {
          annotations.clear();
          for (const a of rows) annotations.set(a.id, a);
          renderList(); redraw();
        });
    };
    self.annotationEvent = function (event, a) {
      if (event === "deleted") { annotations.delete(a.id); editing.delete(a.id); if (selected === a.id) selected = null; renderList(); redraw(); }
      else upsert(a);
    };
    // "AI missed…": the next outline drawn (rectangle, ellipse, freehand) records a finding
    // the AI missed, of the chosen condition, where it is drawn.
    const missedSelect = root.querySelector(".missed-condition");
    function save(shape) {
      const note = noteInput ? noteInput.value : "";
      if (shape.type === "text") { shape.text = note; }
      const body = {shapes: [shape], note: note};
      const outline = ["rect", "ellipse", "freehand"].indexOf(shape.type) >= 0;
      if (missedSelect && missedSelect.value && outline) body.missed_condition = missedSelect.value;
      sendJson(root.dataset.annotationsUrl, "POST", body)
        .then(function (a) {
          if (noteInput) noteInput.value = "";
          if (body.missed_condition) missedSelect.value = "";
          upsert(a);
        })
        .catch(function (err) { statusLine.textContent = "Not saved: " + err.message; });
    }
    function remove(id) {
      sendJson("/api/annotations/" + id + "/", "DELETE")
        .then(function () { self.annotationEvent("deleted", {id: id}); })
        .catch(function (err) { statusLine.textContent = "Not deleted: " + err.message; });
    }
    list.addEventListener("click", function (e) {
      const li = e.target.closest("li[data-annotation-id]");
      if (!li) return;
      const id = Number(li.dataset.annotationId);
      if (e.target.classList.contains("delete")) { remove(id); return; }
      if (e.target.classList.contains("edit")) {
        openEditor(li, id, annotations.get(id).note);
        e.target.remove();
        return;
      }
      if (e.target.classList.contains("save")) {
        sendJson("/api/annotations/" + id + "/", "PATCH", {note: li.querySelector(".edit-note").value})
          .then(function (a) { editing.delete(id); upsert(a); })
          .catch(function (err) { statusLine.textContent = "Not saved: " + err.message; });
        return;
      }
      if (e.target.tagName !== "INPUT") { selected = selected === id ? null : id; renderList(); redraw(); }
    });
    function hit(ix, iy) {
      const pad = 8 / scale;
      for (const a of Array.from(annotations.values()).reverse()) {
        for (const s of a.shapes) {
          let x0, y0, x1, y1;
          if (s.type === "arrow" || s.type === "length") { x0 = Math.min(s.x1, s.x2); x1 = Math.max(s.x1, s.x2); y0 = Math.min(s.y1, s.y2); y1 = Math.max(s.y1, s.y2); }
          else if (s.type === "freehand" || s.type === "angle") {
            const xs = s.points.map(function (p) { return p[0]; }), ys = s.points.map(function (p) { return p[1]; });
            x0 = Math.min.apply(null, xs); x1 = Math.max.apply(null, xs); y0 = Math.min.apply(null, ys); y1 = Math.max.apply(null, ys);
          } else if (s.type === "text") { x0 = s.x; y0 = s.y - 16 / scale; x1 = s.x + 100 / scale; y1 = s.y; }
          else { x0 = Math.min(s.x, s.x + s.w); x1 = Math.max(s.x, s.x + s.w); y0 = Math.min(s.y, s.y + s.h); y1 = Math.max(s.y, s.y + s.h); }
          if (ix >= x0 - pad && ix <= x1 + pad && iy >= y0 - pad && iy <= y1 + pad) return a.id;
        }
      }
      return null;
    }

    // ------------------------------------------------------------------ tools and input
    function setTool(name) {
      if (DRAW_TOOLS.indexOf(name) >= 0 && !canReview) return;
      if (draft && draft.type === "angle" && name !== "angle") { draft = null; redraw(); }
      tool = name;
      for (const b of root.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", b.dataset.tool === tool ? "true" : "false");
      canvas.dataset.mode = tool;
      canvas.style.cursor = tool === "pan" ? "grab" : tool === "window" ? "ns-resize" : "crosshair";
    }
    root.querySelector(".toolbar").addEventListener("click", function (e) {
      const b = e.target.closest("button");
      if (!b) return;
      active = self;
      if (b.dataset.tool) setTool(b.dataset.tool);
      else if (b.dataset.action) action(b.dataset.action);
    });
    presetSelect.addEventListener("change", function () { preset(presetSelect.value); });
    function action(name) {
      if (name === "zoom-in") zoomCentre(1.25);
      else if (name === "zoom-out") zoomCentre(0.8);
      else if (name === "reset") { invert = !!(meta && meta.invert); rot = 0; flip = false; preset("default"); fit(); }
      else if (name === "rotate") { rot = (rot + 1) % 4; fit(); }
      else if (name === "flip") { flip = !flip; fit(); }
      else if (name === "magnify") {
        magnifier = !magnifier;
        const button = root.querySelector("[data-action=magnify]");
        if (button) button.setAttribute("aria-pressed", magnifier ? "true" : "false");
        redraw();
      }
      else if (name === "invert") {
        invert = !invert;
        root.querySelector('[data-action="invert"]').setAttribute("aria-pressed", invert !== !!(meta && meta.invert) ? "true" : "false");
        setWindow(win.center, win.width);
      }
    }
    self.key = function (e) {
      const k = e.key;
      if (k === "+" || k === "=") zoomCentre(1.25);
      else if (k === "-" || k === "_") zoomCentre(0.8);
      else if (k === "0") action("reset");
      else if (k === "h" || k === "H") { heatToggle.checked = !heatToggle.checked; redraw(); }
      else if (k === "i" || k === "I") action("invert");
      else if (k === "o" || k === "O") action("rotate");
      else if (k === "x" || k === "X") action("flip");
      else if (k === "g" || k === "G") action("magnify");
      else if (k === "p" || k === "P") setTool("pan");
      else if (k === "w" || k === "W") setTool("window");
      else if (k === "1") preset("default");
      else if (k === "2") preset("full");
      else if (k === "3") preset("auto");
      else if (k === "r" || k === "R") setTool("rect");
      else if (k === "e" || k === "E") setTool("ellipse");
      else if (k === "a" || k === "A") setTool("arrow");
      else if (k === "f" || k === "F") setTool("freehand");
      else if (k === "t" || k === "T") setTool("text");
      else if (k === "l" || k === "L") setTool("length");
      else if (k === "n" || k === "N") setTool("angle");
      else if (k === "Escape") { draft = null; drag = null; selected = null; setTool("pan"); renderList(); redraw(); }
      else if ((k === "Delete" || k === "Backspace") && selected && annotations.get(selected) &&
               annotations.get(selected).author === me && canReview) remove(selected);
      else return false;
      return true;
    };

    canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    canvas.addEventListener("pointerleave", function () { if (magnifier) { pointer = null; redraw(); } });
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      const p = toImage(e);
      zoomAt(Math.exp(-e.deltaY * 0.0015), p.x, p.y);
    }, {passive: false});
    canvas.addEventListener("pointerdown", function (e) {
      if (!planeData) return;
      active = self;
      canvas.focus();
      canvas.setPointerCapture(e.pointerId);
      const p = toImage(e);
      const mode = e.button === 2 ? "window" : e.button === 1 ? "pan" : tool;
      drag = {mode: mode, start: p, cx: cx, cy: cy, win: {center: win.center, width: win.width}, moved: false};
      if (mode === "rect" || mode === "ellipse") draft = {type: mode, x: p.ix, y: p.iy, w: 0, h: 0};
      else if (mode === "arrow" || mode === "length") draft = {type: mode, x1: p.ix, y1: p.iy, x2: p.ix, y2: p.iy};
      else if (mode === "freehand") draft = {type: "freehand", points: [[p.ix, p.iy]]};
      else if (mode === "angle" && !(draft && draft.type === "angle")) { draft = angleTool.start(p.ix, p.iy); drag.opened = true; }
    });
    canvas.addEventListener("pointermove", function (e) {
      if (magnifier) { const at = toImage(e); pointer = {clientX: e.clientX, clientY: e.clientY, x: at.x, y: at.y}; if (!drag) redraw(); }
      if (!drag && draft && draft.type === "angle") { const at = toImage(e); angleTool.follow(draft, at.ix, at.iy); redraw(); }
      if (!drag) return;
      const p = toImage(e);
      const dx = p.x - drag.start.x, dy = p.y - drag.start.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.mode === "pan") { cx = drag.cx + dx; cy = drag.cy + dy; fitted = false; redraw(); }
      else if (drag.mode === "window") {
        const span = meta.range.max - meta.range.min || 255;
        const perPixel = span / 400;
        setWindow(drag.win.center + dy * perPixel, drag.win.width + dx * perPixel);
      } else if (draft && (draft.type === "rect" || draft.type === "ellipse")) {
        draft.w = p.ix - draft.x; draft.h = p.iy - draft.y; redraw();
      } else if (draft && (draft.type === "arrow" || draft.type === "length")) { draft.x2 = p.ix; draft.y2 = p.iy; redraw(); }
      else if (draft && draft.type === "freehand") { draft.points.push([p.ix, p.iy]); redraw(); }
      else if (draft && draft.type === "angle") { angleTool.follow(draft, p.ix, p.iy); redraw(); }
    });
    canvas.addEventListener("pointerup", function (e) {
      if (!drag) return;
      const p = toImage(e);
      if (drag.mode === "angle" && draft && draft.type === "angle") {
        const done = angleTool.release(draft, p.ix, p.iy, drag.opened, drag.moved);
        drag = null;
        if (done) { draft = null; save(done); }
        redraw();
        return;
      }
      const finished = draft, d = drag;
      drag = null; draft = null;
      if (d.mode === "pan" && !d.moved) { selected = hit(p.ix, p.iy); renderList(); redraw(); return; }
      if (d.mode === "text") {
        if (!noteInput || !noteInput.value.trim()) { statusLine.textContent = "Type the text in the note box first, then click where it goes."; return; }
        statusLine.textContent = "";
        save({type: "text", x: p.ix, y: p.iy});
        return;
      }
      if (!finished || !d.moved) { redraw(); return; }
      if (finished.type === "rect" || finished.type === "ellipse") {
        if (finished.w < 0) { finished.x += finished.w; finished.w = -finished.w; }
        if (finished.h < 0) { finished.y += finished.h; finished.h = -finished.h; }
      }
      save(finished);
      redraw();
    });

    // A resized pane (the window, a panel folded) keeps a fitted image fitted; a zoomed or
    // panned view keeps the reader's zoom and position.
    new ResizeObserver(function () { if (planeData) { if (fitted) fit(); else redraw(); } }).observe(canvas);
    canvas.addEventListener("focus", function () { active = self; });
    setTool("pan");
    self.refreshHeatSources();
    renderList();
    load();
    self.loadAnnotations();
  }

  for (const root of document.querySelectorAll(".viewer[data-image-id]")) {
    viewers[root.dataset.imageId] = new Viewer(root);
    if (!active) active = viewers[root.dataset.imageId];
  }
  document.addEventListener("keydown", function (e) {
    const t = e.target;
    if (!active || e.ctrlKey || e.metaKey || e.altKey) return;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    if (active.key(e)) e.preventDefault();
  });
})();
