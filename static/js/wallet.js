/* Wallet page: live balances, pending transactions, mining state and the history chart. */
(function () {
  "use strict";

  var M = window.Microgrid;
  var chart = null;

  function setField(name, value) {
    var nodes = document.querySelectorAll('[data-field="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) { nodes[i].textContent = value; }
  }

  function renderPending(pending) {
    var list = document.getElementById("pending");
    var empty = document.getElementById("pending-empty");
    if (!list) { return; }
    list.textContent = "";
    (pending || []).forEach(function (tx) {
      var item = document.createElement("li");
      item.dataset.hash = tx.hash;
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = tx.kind;
      var code = document.createElement("code");
      code.textContent = tx.hash;
      item.appendChild(tag);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(code);
      list.appendChild(item);
    });
    if (empty) { empty.hidden = (pending || []).length > 0; }
  }

  function label(start) {
    var d = new Date(start * 1000);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  function drawHistory(history) {
    var canvas = document.getElementById("history-chart");
    if (!canvas || !history || typeof window.Chart !== "function") { return; }
    var labels = history.starts.map(label);
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = history.generation_kwh;
      chart.data.datasets[1].data = history.consumption_kwh;
      chart.update("none");
      return;
    }
    chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "Generation (kWh)", data: history.generation_kwh, backgroundColor: "#19b37d" },
          { label: "Consumption (kWh)", data: history.consumption_kwh, backgroundColor: "#e9a23b" }
        ]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "kWh" } } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }

  function showWallet(summary) {
    if (summary.available) {
      setField("tokens_kwh", summary.tokens_kwh);
      setField("ether", summary.ether);
      setField("credit", summary.credit);
      renderPending(summary.pending);
    }
    if (summary.generation) { setField("generation", summary.generation.text); }
    drawHistory(summary.history);
  }

  function showMining(mining) {
    if (!mining) { return; }
    var state = document.getElementById("mining-state");
    var text = document.getElementById("mining-text");
    var detail = document.getElementById("mining-detail");
    var start = document.getElementById("mining-start");
    var stop = document.getElementById("mining-stop");
    if (state) { state.className = "mining-state " + (mining.mining ? "on" : "off"); }
    if (text) {
      text.textContent = !mining.available ? "Not available on this node"
        : (mining.mining ? "Mining" : "Stopped");
    }
    if (detail) { detail.textContent = mining.detail; }
    if (start) { start.disabled = !mining.available || mining.mining; }
    if (stop) { stop.disabled = !mining.available || !mining.mining; }
  }

  var initial = document.getElementById("wallet-data");
  if (initial) { drawHistory(JSON.parse(initial.textContent).history); }
  M.on("wallet", showWallet);
  M.on("chain", function (status) { showMining(status.mining); });
})();
