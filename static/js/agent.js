/* Wallet page, trading agent panel: the live decision log (Socket.IO `agent` events). */
(function () {
  "use strict";

  var M = window.Microgrid;
  var MAX = 100;
  if (!M) { return; }

  function showState(on) {
    var panel = document.getElementById("agent-panel");
    var state = document.getElementById("agent-state");
    var text = document.getElementById("agent-state-text");
    var off = document.getElementById("agent-off");
    var onButton = document.getElementById("agent-on");
    if (!panel) { return; }
    panel.dataset.on = on ? "true" : "false";
    if (state) { state.className = "mining-state " + (on ? "on" : "off"); }
    if (text) { text.textContent = on ? "On: the server trades for you" : "Off"; }
    if (off) { off.disabled = !on; }
    if (onButton) { onButton.textContent = on ? "Save limits" : "Turn on"; }
  }

  function showHousehold(seen) {
    var line = document.getElementById("agent-household");
    if (!seen) { return; }
    if (!line) {
      var state = document.getElementById("agent-state");
      if (!state) { return; }
      line = document.createElement("p");
      line.id = "agent-household";
      state.parentNode.insertBefore(line, state.nextSibling);
    }
    line.textContent = "As the agent saw it at its last block: battery " +
      seen.battery_percent + " % (" + seen.stored_kwh + " kWh, from " + seen.battery_from +
      "), load minus generation " + seen.net_load_w +
      " W, spent today " + seen.spent_today_eth + " of " + seen.daily_limit_eth + " ETH.";
  }

  /* Entries are numbered (`seq`); the list shows them newest first, each once. An entry arrives
     twice when it was made while the socket connected (as `agent` and in `agent_log`), and an
     older one can arrive after a newer one: it goes in its place. */
  function placeOf(list, seq) {
    var items = list.children;
    for (var i = 0; i < items.length; i++) {
      var shown = Number(items[i].dataset.seq) || 0;
      if (shown === seq) { return null; }
      if (shown < seq) { return items[i]; }
    }
    return undefined;
  }

  function addEntry(entry) {
    var list = document.getElementById("agent-log");
    var empty = document.getElementById("agent-log-empty");
    if (!list || !entry) { return; }
    var before = entry.seq ? placeOf(list, entry.seq) : list.firstChild;
    if (before === null) { return; }
    var item = document.createElement("li");
    item.dataset.kind = entry.kind;
    if (entry.seq) { item.dataset.seq = String(entry.seq); }
    var tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = entry.kind;
    var when = document.createElement("small");
    when.textContent = entry.time_text;
    var text = document.createElement("span");
    text.className = "agent-text";
    text.textContent = entry.text;
    item.appendChild(tag);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(when);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(text);
    list.insertBefore(item, before || null);
    while (list.children.length > MAX) { list.removeChild(list.lastChild); }
    if (empty) { empty.hidden = true; }
    if (list.firstElementChild === item) {  /* the newest: what the agent is now */
      showState(!!entry.on);
      showHousehold(entry.household);
    }
  }

  M.on("agent", addEntry);
  M.on("agent_log", function (data) {  /* on (re)connecting: what was logged meanwhile */
    ((data && data.entries) || []).forEach(addEntry);
  });
})();
