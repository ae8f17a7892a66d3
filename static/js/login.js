/* Login page: pre-select the account last used on this browser (its address only, never a secret). */
(function () {
  "use strict";

  var KEY = "microgrid.lastAccount";
  var form = document.getElementById("login-form");
  if (!form) { return; }
  var store = null;
  try { store = window.localStorage; } catch (e) { store = null; }

  var fieldset = document.getElementById("people-accounts");
  var explicit = fieldset && fieldset.dataset.selected === "1";  // the server chose (e.g. after an error)
  var last = store ? store.getItem(KEY) : null;
  if (!explicit && last) {
    var radios = form.querySelectorAll('input[name="address"]');
    for (var i = 0; i < radios.length; i++) {
      if (radios[i].value === last) {
        radios[i].checked = true;
        var group = radios[i].closest("details");
        if (group) { group.open = true; }
        break;
      }
    }
  }

  form.addEventListener("submit", function () {
    var chosen = form.querySelector('input[name="address"]:checked');
    if (chosen && store) { store.setItem(KEY, chosen.value); }
  });
})();
