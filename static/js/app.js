/* Microgrid Exchange: the live connection, the chain clock, countdowns and notices. */
(function () {
  "use strict";

  var body = document.body;
  var meta = document.querySelector('meta[name="csrf-token"]');
  var chainTime = Number(body.dataset.chainTime) || null;
  var chainSeenAt = Date.now() / 1000;
  var handlers = {};
  var socket = null;
  var leaving = false;

  /* A page that is already navigating (e.g. the Logout form) must not be sent elsewhere. */
  window.addEventListener("beforeunload", function () { leaving = true; });

  function toStart() {
    if (!leaving) { window.location.assign("/"); }
  }

  /* The chain's "now": the latest block's time plus what passed since we heard of it. */
  function chainNow() {
    if (chainTime === null) { return null; }
    return chainTime + (Date.now() / 1000 - chainSeenAt);
  }

  function setChainTime(timestamp) {
    if (timestamp) {
      chainTime = Number(timestamp);
      chainSeenAt = Date.now() / 1000;
    }
  }

  function fmtDuration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var parts = [];
    var units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    for (var i = 0; i < units.length && parts.length < 2; i++) {
      if (seconds >= units[i][0]) {
        parts.push(Math.floor(seconds / units[i][0]) + " " + units[i][1]);
        seconds %= units[i][0];
      }
    }
    return parts.join(" ") || "0 s";
  }

  function tickCountdowns() {
    var now = chainNow();
    if (now === null) { return; }
    var nodes = document.querySelectorAll("[data-deadline]");
    for (var i = 0; i < nodes.length; i++) {
      var left = Number(nodes[i].dataset.deadline) - now;
      nodes[i].textContent = left > 0 ? fmtDuration(left) : "ended";
      var card = nodes[i].closest(".card");
      if (card) { card.classList.toggle("ended", left <= 0); }
    }
  }

  function toast(text, level) {
    var box = document.getElementById("toasts");
    if (!box) { return; }
    var item = document.createElement("div");
    item.className = "toast" + (level === "error" ? " toast-error" : "");
    item.setAttribute("role", "status");
    item.textContent = text;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, 8000);
  }

  function showChain(status) {
    var banner = document.getElementById("chain-banner");
    var text = document.getElementById("chain-banner-text");
    var pill = document.getElementById("chain-pill");
    if (banner) { banner.hidden = !!status.available; }
    if (text && status.message) { text.textContent = status.message; }
    if (pill) {
      pill.textContent = status.available ? "block #" + status.block : "chain offline";
      pill.className = "pill " + (status.available ? "pill-ok" : "pill-bad");
    }
    if (status.available) { setChainTime(status.timestamp); }
  }

  function on(name, fn) {
    (handlers[name] = handlers[name] || []).push(fn);
    if (socket) { socket.on(name, fn); }
  }

  if (body.dataset.live && typeof window.io === "function") {
    socket = window.io();
    socket.on("chain", showChain);
    socket.on("notice", function (notice) { toast(notice.text, notice.level); });
    socket.on("session_expired", toStart);
    socket.on("connect_error", function (err) {
      if (err && /log in/i.test(err.message || "")) { toStart(); }
    });
  }

  tickCountdowns();
  setInterval(tickCountdowns, 1000);

  window.Microgrid = {
    on: on,
    socket: socket,
    chainNow: chainNow,
    setChainTime: setChainTime,
    toast: toast,
    fmtDuration: fmtDuration,
    tickCountdowns: tickCountdowns,
    csrfToken: meta ? meta.content : "",
    me: body.dataset.me || null
  };
})();
