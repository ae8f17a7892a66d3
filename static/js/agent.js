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
  }

  M.on("agent", addEntry);
})();
