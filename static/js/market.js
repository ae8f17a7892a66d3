/* Marketplace page: reload the cards when the market changes (ended auctions change at once),
   and draw the cleared prices. */
(function () {
  "use strict";

  var M = window.Microgrid;
  var chart = null;
  var loading = false;
  var again = false;

  /* Typed-but-unsent bids survive a refresh of the cards. */
  function typedBids() {
    var typed = {};
    var forms = document.querySelectorAll(".bid-form");
    for (var i = 0; i < forms.length; i++) {
      var input = forms[i].querySelector('input[name="price"]');
      if (input && input.value !== input.defaultValue) {
        typed[forms[i].dataset.lot] = { value: input.value, focused: document.activeElement === input };
      }
    }
    return typed;
  }

  function restoreBids(typed) {
    Object.keys(typed).forEach(function (lot) {
      var input = document.querySelector('.bid-form[data-lot="' + lot + '"] input[name="price"]');
      if (input) {
        input.value = typed[lot].value;
        if (typed[lot].focused) { input.focus(); }
      }
    });
  }

  function reloadBoard() {
    if (loading) { again = true; return; }
    loading = true;
    fetch("/market/board", { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.assign("/");
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        var board = document.getElementById("board");
        if (html === null || !board) { return; }
        var typed = typedBids();
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var fresh = holder.querySelector("#board");
        if (fresh) {
          M.formatFigures(fresh);
          board.replaceWith(fresh);
          M.setChainTime(fresh.dataset.chainTime);
          restoreBids(typed);
          M.tickCountdowns();
        }
      })
      .catch(function () { /* offline for a moment: the next push tries again */ })
      .then(function () {
        loading = false;
        if (again) { again = false; reloadBoard(); }
      });
  }

  function drawPrices(cleared) {
    var canvas = document.getElementById("price-chart");
    var empty = document.getElementById("prices-empty");
    if (empty) { empty.hidden = (cleared || []).length > 0; }
    if (!canvas || typeof window.Chart !== "function") { return; }
    var labels = cleared.map(function (c) { return "#" + c.id; });
    var prices = cleared.map(function (c) { return Number(c.price); });
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = prices;
      chart.update("none");
      return;
    }
    chart = new window.Chart(canvas, {
      type: "line",
      data: {
        labels: labels,
        datasets: [{
          label: "Cleared price (ETH per kWh)",
          data: prices,
          borderColor: "#0d7a63",
          backgroundColor: "rgba(13, 122, 99, .12)",
          fill: true,
          tension: 0.25
        }]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { y: { beginAtZero: true } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }

  var initial = document.getElementById("market-data");
  if (initial) { drawPrices(JSON.parse(initial.textContent).cleared || []); }
  /* The push says which auctions have ended: their cards change at once, before the reload. */
  function endListings(snapshot) {
    ((snapshot && snapshot.listings) || []).forEach(function (listing) {
      if (listing.ended) { M.endCard(document.getElementById("listing-" + listing.id)); }
    });
  }

  M.on("market", function (snapshot) {
    endListings(snapshot);
    reloadBoard();
    if (snapshot && snapshot.available) { drawPrices(snapshot.cleared || []); }
  });
})();
