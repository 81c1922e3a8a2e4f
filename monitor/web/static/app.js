// envmon inspectors' page: live alerts from the SSE stream, uPlot charts. No inline script
// (the page's Content-Security-Policy allows only this server's files).
(function () {
  "use strict";
  var EVENT_KINDS = ["pending", "opened", "escalated", "acknowledged", "resolved", "comment", "assigned"];
  window.envmon = { charts: {} };

  function live() {
    if (!document.querySelector("[hx-trigger~='envmon-alert']") || !window.EventSource) return;
    var source = new EventSource("/v1/alerts/stream");
    var pending = null;
    var poke = function () {  // one refresh per burst of events
      if (pending) return;
      pending = setTimeout(function () { pending = null; htmx.trigger(document.body, "envmon-alert"); }, 300);
    };
    EVENT_KINDS.forEach(function (k) { source.addEventListener(k, poke); });
    source.onopen = function () { var b = document.getElementById("live"); if (b) b.hidden = false; };
    window.envmon.stream = source;
  }

  function plot(el, label, x, y) {
    if (window.envmon.charts[el.id]) window.envmon.charts[el.id].destroy();
    var width = Math.max(280, el.clientWidth);
    var chart = new uPlot({
      width: width, height: 240,
      series: [{}, { label: label, stroke: "#0b5cad", width: 2, points: { show: x.length < 200 } }],
      axes: [{}, {}],
    }, [x, y], el);
    window.envmon.charts[el.id] = chart;
    return chart;
  }

  function alertChart() {
    var el = document.getElementById("alert-chart");
    if (!el) return;
    var s = JSON.parse(el.getAttribute("data-series"));
    plot(el, s.label, s.x, s.y);
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
})();
