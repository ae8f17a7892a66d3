/* Wallet page: live balances, pending transactions, mining state and the history chart. */
(function () {
  "use strict";

  var M = window.Microgrid;
  var chart = null;

  /* Set a figure's exact value (data-eth/data-kwh + data-wei); app.js gives it its short text. */
  function setFigure(name, kind, value, wei) {
    var nodes = document.querySelectorAll('[data-field="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].dataset[kind] = value;
      if (wei !== undefined) { nodes[i].dataset.wei = wei; }
      M.formatFigures(nodes[i].parentNode);
    }
  }

  /* Power now from the supply meter (whole W), or why there is none. */
  function showGeneration(generation) {
    var node = document.getElementById("generation");
    var unit = document.getElementById("power-unit");
    if (!node || !generation) { return; }
    var watts = generation.power_w;
    if (watts === null || watts === undefined) {
      delete node.dataset.watts;
      node.removeAttribute("title");
      node.textContent = generation.text;
      if (unit) { unit.hidden = true; }
    } else {
      node.dataset.watts = watts;
      if (unit) { unit.hidden = false; }
      M.formatFigures(node.parentNode);
    }
  }

  var DAY = 86400;

  /* Bars on the chain's clock: the server's buckets merged so a window shows at most ~24 bars. */
  function binned(history) {
    var size = history.bucket_seconds;
    var per = Math.max(1, Math.ceil(history.starts.length / 24));
    var out = { size: size * per, starts: [], generation: [], consumption: [] };
    for (var i = 0; i < history.starts.length; i++) {
      var start = history.starts[i];
      var slot = start - (start % out.size);
      var last = out.starts.length - 1;
      if (last < 0 || out.starts[last] !== slot) {
        out.starts.push(slot);
        out.generation.push(0);
        out.consumption.push(0);
        last += 1;
      }
      out.generation[last] += Number(history.generation_kwh[i]) || 0;
      out.consumption[last] += Number(history.consumption_kwh[i]) || 0;
    }
    out.generation = out.generation.map(function (v) { return Math.round(v * 1000) / 1000; });
    out.consumption = out.consumption.map(function (v) { return Math.round(v * 1000) / 1000; });
    return out;
  }

  /* Today's generation on the chain's clock (UTC day), from the readings in the history. */
  function showToday(history) {
    var node = document.getElementById("energy-today");
    var span = document.getElementById("energy-today-span");
    if (!node || !history || !history.starts.length) { return; }
    var now = M.chainNow();
    var last = history.starts[history.starts.length - 1] + history.bucket_seconds;
    if (now === null) { now = last - 1; }
    var midnight = now - (now % DAY);
    var first = history.starts[0];
    var from = Math.max(midnight, first);
    var wh = 0;
    for (var i = 0; i < history.starts.length; i++) {
      if (history.starts[i] >= from) { wh += Math.round(Number(history.generation_kwh[i]) * 1000); }
    }
    node.dataset.kwh = (wh / 1000).toFixed(3);
    M.formatFigures(node.parentNode);
    if (span) {
      span.textContent = (from > midnight ? "in the last " + M.fmtDuration(now - from) : "today") +
        " (chain clock)";
    }
  }

  function describeBins(size) {
    var hint = document.getElementById("chart-hint");
    if (hint) {
      hint.textContent = "kWh per " + M.fmtDuration(size) + " of chain time (UTC), from the " +
        "meters' readings on the chain.";
    }
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

  /* A bar's label: its start on the chain's clock, UTC. */
  function label(start) {
    var d = new Date(start * 1000);
    return ("0" + d.getUTCHours()).slice(-2) + ":" + ("0" + d.getUTCMinutes()).slice(-2);
  }

  function drawHistory(history) {
    var canvas = document.getElementById("history-chart");
    if (!history) { return; }
    showToday(history);
    var bins = binned(history);
    describeBins(bins.size);
    if (!canvas || typeof window.Chart !== "function") { return; }
    var labels = bins.starts.map(label);
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = bins.generation;
      chart.data.datasets[1].data = bins.consumption;
      chart.update("none");
      return;
    }
    chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "Generation (kWh)", data: bins.generation, backgroundColor: "#19b37d" },
          { label: "Consumption (kWh)", data: bins.consumption, backgroundColor: "#e9a23b" }
        ]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: {
          x: { title: { display: true, text: "chain time (UTC)" } },
          y: { beginAtZero: true, title: { display: true, text: "kWh" } }
        },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }

  function showWallet(summary) {
    if (summary.available) {
      setFigure("tokens_kwh", "kwh", summary.tokens_kwh);
      setFigure("ether", "eth", summary.ether, summary.ether_wei);
      setFigure("credit", "eth", summary.credit, summary.credit_wei);
      renderPending(summary.pending);
    }
    showGeneration(summary.generation);
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
