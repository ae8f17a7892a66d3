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
      seen.battery_percent + " % (" + seen.stored_kwh + " kWh), load minus generation " + seen.net_load_w +
      " W, spent today " + seen.spent_today_eth + " of " + seen.daily_limit_eth + " ETH.";
  }

  function addEntry(entry) {
    var list = document.getElementById("agent-log");
    var empty = document.getElementById("agent-log-empty");
    if (!list || !entry) { return; }
    var item = document.createElement("li");
    item.dataset.kind = entry.kind;
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
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX) { list.removeChild(list.lastChild); }
    if (empty) { empty.hidden = true; }
    showState(!!entry.on);
    showHousehold(entry.household);
  }

  M.on("agent", addEntry);
})();
