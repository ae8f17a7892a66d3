/* Microgrid Exchange: the live connection, the chain clock, countdowns, figures and notices. */
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
      var card = nodes[i].closest(".card");
      if (left > 0) {
        if (!card || card.dataset.ended !== "1") { nodes[i].textContent = fmtDuration(left); }
      } else {
        nodes[i].textContent = "ended";
        endCard(card);
      }
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

  /* -- figures: short text with its unit's precision, the exact value on hover ------------- */

  /* "12.3400" -> "12.34", "5.000" stays as asked by the caller. */
  function trimZeros(text) {
    return text.indexOf(".") < 0 ? text : text.replace(/0+$/, "").replace(/\.$/, "");
  }

  /* An exact decimal text rounded to `decimals` places (half up), exactly (BigInt). */
  function roundDecimal(text, decimals) {
    var match = /^(-?)(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
    if (!match) { return String(text); }
    var frac = (match[3] || "");
    var scale = Math.max(frac.length, decimals);
    var scaled = BigInt((match[2] || "0") + frac.padEnd(scale, "0"));
    var unit = BigInt(10) ** BigInt(scale - decimals);
    var rounded = (scaled + unit / BigInt(2)) / unit;
    var digits = rounded.toString().padStart(decimals + 1, "0");
    var whole = digits.slice(0, digits.length - decimals);
    var part = digits.slice(digits.length - decimals);
    var negative = match[1] === "-" && rounded !== BigInt(0);
    return (negative ? "-" : "") + whole + (decimals ? "." + part : "");
  }

  /* Ether: 4 decimals from 1 ETH up, 4 significant digits below (0.0000021), no trailing zeros. */
  function fmtEther(text) {
    var match = /^-?(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
    if (!match) { return String(text); }
    var decimals = 4;
    if (!/[1-9]/.test(match[1] || "")) {
      var lead = (match[2] || "").search(/[1-9]/);
      if (lead < 0) { return "0"; }
      decimals = Math.min(18, lead + 4);
    }
    return trimZeros(roundDecimal(text, decimals));
  }

  /* kWh with 3 decimals (exact: a token unit is one Wh). */
  function fmtKwh(text) { return roundDecimal(text, 3); }

  /* Watts as a whole number. */
  function fmtWatts(value) { return String(Math.round(Number(value))); }

  /* Give every [data-eth], [data-kwh], [data-watts] under `root` its short text (plus its
     data-suffix, e.g. " ETH/kWh") and the exact value as its title. */
  function formatFigures(root) {
    var scope = root || document;
    scope.querySelectorAll("[data-eth]").forEach(function (node) {
      var exact = node.dataset.eth;
      node.textContent = fmtEther(exact) + (node.dataset.suffix || "");
      node.title = exact + " ETH" + (node.dataset.wei ? " = " + node.dataset.wei + " wei" : "");
    });
    scope.querySelectorAll("[data-kwh]").forEach(function (node) {
      var exact = node.dataset.kwh;
      var of = node.dataset.kwhOf;
      if (exact === "") { return; }
      node.textContent = fmtKwh(exact) + (of ? " of " + fmtKwh(of) : "") + (node.dataset.suffix || "");
      node.title = exact + (of ? " of " + of : "") + " kWh (1 token = 1 kWh = 1,000 Wh)";
    });
    scope.querySelectorAll("[data-watts]").forEach(function (node) {
      var exact = node.dataset.watts;
      if (exact === "") { return; }
      node.textContent = fmtWatts(exact) + (node.dataset.suffix || "");
      node.title = exact + " W";
    });
  }

  /* -- flashes that follow their transaction: pending -> mined, or failed with the reason --- */

  var tracked = {};  // tx hash -> {node, state}

  function trackFlashes() {
    var pattern = /Transaction (0x[0-9a-fA-F]{64}) is pending\./;
    document.querySelectorAll(".flash").forEach(function (flash) {
      var match = pattern.exec(flash.textContent);
      if (!match) { return; }
      var hash = match[1].toLowerCase();
      var before = flash.textContent.slice(0, match.index);
      var after = flash.textContent.slice(match.index + match[0].length);
      flash.textContent = before;
      flash.appendChild(document.createTextNode("Transaction "));
      var code = document.createElement("code");
      code.textContent = match[1].slice(0, 10) + "…" + match[1].slice(-8);
      code.title = match[1];
      code.className = "tx-hash";
      flash.appendChild(code);
      flash.appendChild(document.createTextNode(" "));
      var state = document.createElement("span");
      state.className = "tx-state";
      state.textContent = "is pending.";
      flash.appendChild(state);
      if (after.trim()) { flash.appendChild(document.createTextNode(after)); }
      flash.dataset.tx = hash;
      flash.dataset.txState = "pending";
      tracked[hash] = { node: flash, state: state };
    });
  }

  function settleFlash(hash, outcome, reason) {
    var item = tracked[hash];
    if (!item) { return; }
    var flash = item.node;
    if (outcome === "failed") {
      item.state.textContent = "failed: " + reason;
      flash.classList.remove("flash-ok", "flash-info");
      flash.classList.add("flash-error");
      delete tracked[hash];
    } else if (flash.dataset.txState === "pending") {
      item.state.textContent = "was mined.";  // a later failure notice may still correct it
    }
    flash.dataset.txState = outcome;
  }

  /* A `wallet` push lists the account's pending transactions: a tracked one missing is mined. */
  function followPending(summary) {
    if (!summary || !summary.available || !summary.pending) { return; }
    var pending = {};
    summary.pending.forEach(function (tx) { pending[String(tx.hash).toLowerCase()] = true; });
    Object.keys(tracked).forEach(function (hash) {
      if (!pending[hash]) { settleFlash(hash, "mined"); }
    });
  }

  /* A failure notice names its transaction; its flash says so (and the toast is not needed). */
  function followNotice(notice) {
    var hash = notice && notice.tx_hash ? String(notice.tx_hash).toLowerCase() : null;
    if (hash && tracked[hash] && notice.level === "error") {
      var reason = String(notice.text).replace(/^Your .*? failed: /, "");
      settleFlash(hash, "failed", reason);
      return true;
    }
    return false;
  }

  /* -- cards whose auction ended: the ended state in place, without waiting for a reload --- */

  function endCard(card) {
    if (!card || card.dataset.ended === "1") { return; }
    card.dataset.ended = "1";
    card.classList.add("ended");
    card.querySelectorAll(".when-open").forEach(function (node) { node.hidden = true; });
    card.querySelectorAll("template.when-ended").forEach(function (template) {
      template.replaceWith(template.content.cloneNode(true));
    });
    var countdown = card.querySelector(".countdown");
    if (countdown) { countdown.textContent = "ended"; }
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
    socket.on("notice", function (notice) {
      if (!followNotice(notice)) { toast(notice.text, notice.level); }
    });
    socket.on("wallet", followPending);
    socket.on("session_expired", toStart);
    socket.on("connect_error", function (err) {
      if (err && /log in/i.test(err.message || "")) { toStart(); }
    });
  }

  formatFigures(document);
  trackFlashes();
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
    formatFigures: formatFigures,
    fmtEther: fmtEther,
    fmtKwh: fmtKwh,
    endCard: endCard,
    csrfToken: meta ? meta.content : "",
    me: body.dataset.me || null
  };
})();
