// Charts on the operator and treasury pages, drawn with uPlot (/static/vendor/uplot/). Each
// [data-chart] element names, in data-source, a json_script its page rendered from a Chart
// (apps/credits/charts.py): {kind, x, x_labels, categories, y_max, series: [{label, values,
// decimals, unit, color}]}. Amounts come in base units with their decimals and are scaled here,
// for drawing only; the figure's caption and table (rendered by the server) are the text.
(() => {
  const drawn = (window.peerCharts = {});
  const HEIGHT = 220;
  const DAY = 86400;

  const scaled = (values, decimals) => values.map((v) => (v === null ? null : v / 10 ** decimals));
  const number = new Intl.NumberFormat("en", { maximumFractionDigits: 9 });
  const tick = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 3 });
  // Counts tick at whole numbers only (no "1.5 jobs").
  const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

  function seriesOptions(chart, s, i) {
    const options = {
      label: s.unit ? `${s.label} (${s.unit})` : s.label,
      stroke: s.color,
      width: 2,
      value: (u, v) => (v === null || v === undefined ? "—" : number.format(v)),
    };
    if (chart.kind === "bars") {
      // Two series side by side: the first left of its day, the second right of it.
      const pair = chart.series.length > 1;
      Object.assign(options, {
        fill: s.color, width: 0, points: { show: false },
        paths: uPlot.paths.bars({ size: [pair ? 0.4 : 0.7, 48], align: pair ? (i === 0 ? -1 : 1) : 0 }),
      });
    } else if (chart.kind === "steps") {
      Object.assign(options, { paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } });
    }
    return options;
  }

  function xOptions(chart) {
    if (chart.categories) {
      const n = chart.x.length;
      return {
        scale: { time: false, range: () => [-0.5, Math.max(n, 1) - 0.5] },
        axis: { splits: () => chart.x, values: (u, splits) => splits.map((i) => chart.x_labels[i] ?? "") },
      };
    }
    // Half a day either side, so the first and last days' bars are whole.
    return { scale: { time: true, range: (u, min, max) => [min - DAY / 2, max + DAY / 2] }, axis: {} };
  }

  function options(chart, width) {
    const x = xOptions(chart);
    const unit = chart.series[0]?.unit || "";
    return {
      width, height: HEIGHT,
      // The node counts days in UTC: so does the axis.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: x.scale,
        y: { range: (u, min, max) => [0, chart.y_max ?? (max > 0 ? max * 1.1 : 1)] },
      },
      axes: [
        { stroke: "#14161a", grid: { stroke: "#e3e6ea" }, ...x.axis },
        { stroke: "#14161a", grid: { stroke: "#e3e6ea" }, label: unit, size: 64,
          ...(chart.whole ? { incrs: WHOLE } : {}),
          values: (u, splits) => splits.map((v) => tick.format(v)) },
      ],
      series: [
        { label: chart.categories ? "Worker" : "Day",
          value: (u, v) => (v === null ? "—" : chart.categories ? chart.x_labels[v] ?? ""
            : new Date(v * 1e3).toISOString().slice(0, 10)) },
        ...chart.series.map((s, i) => seriesOptions(chart, s, i)),
      ],
    };
  }

  function draw(element) {
    const source = document.getElementById(element.dataset.source);
    if (!source) return;
    const chart = JSON.parse(source.textContent);
    const data = [chart.x, ...chart.series.map((s) => scaled(s.values, s.decimals))];
    const width = () => Math.max(element.clientWidth, 280);
    const plot = new uPlot(options(chart, width()), data, element);
    drawn[element.dataset.chart] = plot;
    element.dataset.drawn = "true";
    new ResizeObserver(() => plot.setSize({ width: width(), height: HEIGHT })).observe(element);
  }

  function drawAll() {
    if (typeof uPlot === "undefined") return; // the library did not load: the tables still say it all
    document.querySelectorAll("[data-chart]").forEach(draw);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
