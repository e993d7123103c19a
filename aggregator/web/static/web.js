// Charts of the linewatch pages, drawn with the vendored uPlot. Each chart is a
// <div data-chart="..." data-source="ID"> whose data sits in <script type="application/json"
// id="ID"> (no inline script: the pages' Content-Security-Policy allows none).
(function () {
  "use strict";

  var COLORS = { score: "#0b5cad", threshold: "#c0392b", precision: "#0b5cad",
                 recall: "#1e8449", f1: "#7d3c98" };

  function width(el) {
    return Math.max(280, el.clientWidth);
  }

  function percent(u, values) {
    return values.map(function (v) { return v == null ? "" : Math.round(v * 100) + " %"; });
  }

  function scores(el, d) {
    var threshold = d.x.map(function () { return d.threshold; });
    return new uPlot({
      width: width(el), height: 280,
      scales: { y: { range: [0, 1] } },
      axes: [{}, { label: "risk score", size: 60 }],
      series: [
        {},
        { label: "score", stroke: COLORS.score, width: 2, spanGaps: false,
          points: { show: d.x.length < 60 } },
        { label: "alert threshold", stroke: COLORS.threshold, width: 2, dash: [8, 6],
          points: { show: false } }
      ]
    }, [d.x, d.score, threshold], el);
  }

  // Each month's value as a point, its 95 % interval as a whisker (a band would vanish
  // with one month, and a period is often one or two).
  function months(el, d) {
    var day = 86400;
    var lo = d.x.length ? d.x[0] - 16 * day : 0;
    var hi = d.x.length ? d.x[d.x.length - 1] + 16 * day : 1;
    var names = ["precision", "recall", "f1"];
    var series = [{}];
    var data = [d.x];
    names.forEach(function (name) {
      series.push({ label: name === "f1" ? "F1" : name, stroke: COLORS[name], width: 2,
                    spanGaps: true, points: { show: true, size: 10, fill: COLORS[name] } });
      data.push(d[name]);
    });
    function whiskers(u) {
      var ctx = u.ctx;
      names.forEach(function (name, i) {
        var shift = (i - 1) * 6 * devicePixelRatio;
        ctx.save();
        ctx.strokeStyle = COLORS[name];
        ctx.lineWidth = 2 * devicePixelRatio;
        d.x.forEach(function (x, j) {
          var low = d[name + "_low"][j], high = d[name + "_high"][j];
          if (low == null || high == null) { return; }
          var px = u.valToPos(x, "x", true) + shift;
          var y0 = u.valToPos(low, "y", true), y1 = u.valToPos(high, "y", true);
          ctx.beginPath();
          ctx.moveTo(px, y0); ctx.lineTo(px, y1);
          ctx.moveTo(px - 4 * devicePixelRatio, y0); ctx.lineTo(px + 4 * devicePixelRatio, y0);
          ctx.moveTo(px - 4 * devicePixelRatio, y1); ctx.lineTo(px + 4 * devicePixelRatio, y1);
          ctx.stroke();
        });
        ctx.restore();
      });
    }
    return new uPlot({
      width: width(el), height: 280,
      scales: { x: { time: true, range: [lo, hi] }, y: { range: [0, 1] } },
      axes: [{}, { values: percent, size: 60 }],
      series: series,
      hooks: { draw: [whiskers] }
    }, data, el);
  }

  var DRAW = { scores: scores, months: months };

  function draw() {
    var made = [];
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var source = document.getElementById(el.dataset.source);
      var make = DRAW[el.dataset.chart];
      if (!source || !make) { return; }
      var plot = make(el, JSON.parse(source.textContent));
      made.push([el, plot]);
    });
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(function () {
        made.forEach(function (m) { m[1].setSize({ width: width(m[0]), height: 280 }); });
      }, 100);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
