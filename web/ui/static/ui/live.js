// Websocket with reconnect. Each time it opens, the page re-reads the server: events sent while
// the page was loading or offline are never missed.
"use strict";
// `others` maps further event types ("study", "annotation") to their handlers; a function
// alone is the "study" handler (a person claimed, released, reviewed a study).
window.radtriageLive = function (path, onEvent, onOpen, others) {
  if (typeof others === "function") others = {study: others};
  const status = document.getElementById("live-status");
  let delay = 1000;
  function setStatus(state, text) {
    if (status) { status.dataset.state = state; status.textContent = text; }
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(scheme + "://" + location.host + path);
    ws.onopen = function () {
      setStatus("live", "live");
      delay = 1000;
      if (onOpen) onOpen();
    };
    ws.onmessage = function (msg) {
      const data = JSON.parse(msg.data);
      if (data.type === "analysis" || data.type === "batch") onEvent(data);
      else if (others && others[data.type]) others[data.type](data);
    };
    ws.onclose = function () {
      setStatus("offline", "offline – reconnecting");
      setTimeout(connect, delay); delay = Math.min(delay * 2, 30000);
    };
  }
  connect();
};
window.radtriageEscape = function (value) {
  return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
  });
};
window.radtriageCsrf = function () {
  const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  if (m) return decodeURIComponent(m[1]);
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
};
