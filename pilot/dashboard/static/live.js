// Live updates and confirmations; no framework. The server sends `change` (server-sent events) when the store
// changed; the page re-fetches itself and swaps each [data-live] part whose content differs.
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base || "/dashboard";
  var dot = document.getElementById("live");
  var busy = false, again = false;

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var fresh = doc.querySelector('[data-live="' + el.dataset.live + '"]');
          if (fresh && fresh.innerHTML !== el.innerHTML) {
            el.innerHTML = fresh.innerHTML;
            el.classList.remove("flash"); void el.offsetWidth; el.classList.add("flash");
          }
        });
        body.dataset.updates = String(Number(body.dataset.updates || "0") + 1);
      })
      .catch(function () {})
      .finally(function () { busy = false; if (again) { again = false; refresh(); } });
  }

  if (window.EventSource && body.dataset.page) {
    var source = new EventSource(base + "/events");
    source.addEventListener("hello", function () { dot && dot.classList.add("on"); });
    source.addEventListener("change", function (ev) { body.dataset.marker = ev.data; refresh(); });
    source.onerror = function () { dot && dot.classList.remove("on"); };
  }

  document.addEventListener("click", function (ev) {
    var t = ev.target.closest("[data-confirm],[data-close],[data-ask]");
    if (!t) return;
    if (t.dataset.confirm) {
      var d = document.getElementById(t.dataset.confirm);
      if (d && d.showModal) d.showModal();
    } else if (t.hasAttribute("data-close")) {
      t.closest("dialog").close();
    } else if (t.dataset.ask && !window.confirm(t.dataset.ask)) {
      ev.preventDefault();
    }
  });
})();
