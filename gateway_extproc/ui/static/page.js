// The spend page's chart: cost per day from the JSON block the server rendered (no inline
// script: the Content-Security-Policy allows scripts from the page's own origin only).
(function () {
  "use strict";
  function draw() {
    var holder = document.getElementById("chart");
    var source = document.getElementById("chart-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    var xs = data.days.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    var ys = data.cost_micros.map(function (m) { return m / 1e6; });
    var width = Math.max(280, holder.clientWidth || 600);
    var opts = {
      width: width,
      height: 220,
      scales: { x: { time: true } },
      series: [{}, { label: "cost (USD)", stroke: "#2457c5", fill: "rgba(36,87,197,0.12)",
        value: function (u, v) { return v == null ? "-" : "$" + v.toFixed(6); } }],
      axes: [{}, {
        values: function (u, vals) { return vals.map(function (v) { return "$" + v; }); },
        // wide enough for the longest label: small amounts have many decimals ($0.00015)
        size: function (u, values) {
          var longest = Math.max.apply(null, (values || ["$0"]).map(function (v) { return v.length; }));
          return 16 + 8 * longest;
        },
      }],
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
    };
    var plot = new uPlot(opts, [xs, ys], holder);
    window.addEventListener("resize", function () {
      plot.setSize({ width: Math.max(280, holder.clientWidth), height: 220 });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
