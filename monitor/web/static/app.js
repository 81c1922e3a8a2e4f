// envmon inspectors' page: live alerts from the SSE stream, uPlot charts. No inline script
// (the page's Content-Security-Policy allows only this server's files).
(function () {
  "use strict";
  var EVENT_KINDS = ["pending", "opened", "escalated", "acknowledged", "resolved", "comment", "assigned"];
  window.envmon = { charts: {}, held: 0 };

  var LIVE = "[hx-trigger~='envmon-alert']";

  // Whether the person is filling in a form that a live refresh would replace: a note typed,
  // a choice changed, or a field of it in focus. The refresh waits until they are done.
  function editing() {
    var active = document.activeElement;
    if (active && active.form && active.closest(LIVE)) return true;
    return Array.prototype.some.call(document.querySelectorAll(LIVE + " form"), function (f) {
      return Array.prototype.some.call(f.elements, function (e) {
        if (e.tagName === "SELECT") {
          return Array.prototype.some.call(e.options, function (o) { return o.selected !== o.defaultSelected; });
        }
        return e.type !== "hidden" && e.value !== undefined && e.defaultValue !== undefined && e.value !== e.defaultValue;
      });
    });
  }

  function live() {
    if (!document.querySelector(LIVE) || !window.EventSource) return;
    var source = new EventSource("/v1/alerts/stream");
    var pending = null;
    var poke = function () {  // one refresh per burst of events, none while a form is being filled
      if (pending) return;
      pending = setTimeout(function () {
        pending = null;
        if (editing()) { window.envmon.held += 1; poke(); return; }
        htmx.trigger(document.body, "envmon-alert");
      }, 300);
    };
    window.envmon.poke = poke;
    EVENT_KINDS.forEach(function (k) { source.addEventListener(k, poke); });
    source.onopen = function () { var b = document.getElementById("live"); if (b) b.hidden = false; };
    window.envmon.stream = source;
  }

  function plot(el, label, x, y, extra) {
    if (window.envmon.charts[el.id]) window.envmon.charts[el.id].destroy();
    extra = extra || [];
    var width = Math.max(280, el.clientWidth);
    var chart = new uPlot({
      width: width, height: 240,
      // the city's time zone on the axis, as everywhere else on the page
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), document.body.dataset.tz || "Asia/Shanghai"); },
      series: [{}, { label: label, stroke: "#0b5cad", width: 2, points: { show: x.length < 200 } }]
        .concat(extra.map(function (e) { return e.series; })),
      axes: [{}, {}],
    }, [x, y].concat(extra.map(function (e) { return e.data; })), el);
    window.envmon.charts[el.id] = chart;
    return chart;
  }

  // A chart is drawn at its box's width: follow the box when the window turns or narrows
  // (a tablet rotated to a phone-like width would otherwise scroll sideways).
  window.addEventListener("resize", function () {
    Object.keys(window.envmon.charts).forEach(function (id) {
      var el = document.getElementById(id);
      var chart = window.envmon.charts[id];
      if (el && chart) chart.setSize({ width: Math.max(280, el.clientWidth), height: 240 });
    });
  });

  function alertChart() {
    var el = document.getElementById("alert-chart");
    if (!el) return;
    var s = JSON.parse(el.getAttribute("data-series"));
    // the rule's tiers as flat dashed lines across the readings
    var colours = { warn_above: "#e0a000", warn_below: "#e0a000", alarm_above: "#b00020", alarm_below: "#b00020" };
    var extra = Object.keys(s.tiers || {}).map(function (name) {
      return { series: { label: (s.tier_labels || {})[name] || name, stroke: colours[name], dash: [6, 4], width: 1, points: { show: false } },
               data: s.x.map(function () { return s.tiers[name]; }) };
    });
    plot(el, s.label, s.x, s.y, extra);
  }

  function trend() {
    var el = document.getElementById("trend");
    if (!el) return;
    var metric = document.getElementById("trend-metric").value;
    var hours = Number(document.getElementById("trend-hours").value);
    var start = new Date(Date.now() - hours * 3600 * 1000).toISOString();
    // raw readings for short ranges, the hourly means of the same API for long ones
    var bucket = hours > 48 ? "hour" : "raw";
    var url = "/v1/readings?" + new URLSearchParams({
      device_id: el.getAttribute("data-device"), metric: metric, start: start,
      bucket: bucket, limit: "1000"
    });
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (page) {
      var items = (page.items || []).slice().reverse();
      var x = items.map(function (r) { return Date.parse(r.ts || r.hour) / 1000; });
      var y = items.map(function (r) { return r.value !== undefined ? r.value : r.mean; });
      var unit = items.length ? " (" + items[0].unit + ")" : "";
      plot(el, metric + unit, x, y);
      el.setAttribute("data-points", String(x.length));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    live();
    alertChart();
    trend();
    var form = document.getElementById("trend-form");
    if (form) form.addEventListener("change", trend);
  });
  document.addEventListener("htmx:afterSwap", alertChart);
  // An action the server refused (htmx swaps nothing on an error): say why, from the
  // problem object's detail, until the next action succeeds.
  document.addEventListener("htmx:responseError", function (evt) {
    var flash = document.getElementById("flash");
    if (!flash) return;
    var xhr = evt.detail.xhr;
    var detail = "HTTP " + xhr.status;
    try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (e) { /* not JSON */ }
    flash.textContent = detail;
    flash.hidden = false;
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var flash = document.getElementById("flash");
    if (flash && evt.detail.successful && evt.detail.requestConfig.verb !== "get") flash.hidden = true;
  });
  // A live refresh already on its way when the person started filling a form: keep their
  // input, refresh after (the form's own post swaps as usual).
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var verb = evt.detail.requestConfig && evt.detail.requestConfig.verb;
    if (verb === "get" && editing()) {
      evt.detail.shouldSwap = false;
      window.envmon.held += 1;
      if (window.envmon.poke) window.envmon.poke();
    }
  });
})();
