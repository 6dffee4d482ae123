// A node card's sparkline: the CPU and memory the node's jobs and host used, as shares
// of its capacity, over the overview's chosen range (from the cluster history).

import { sparkline } from "../charts.js";
import { fmtPercent, h, setHidden, setText } from "../dom.js";
import { history, rangeSeconds, windowEnd } from "../history.js";

export function nodeSpark() {
  const spark = sparkline([{ cls: "spark-cpu" }, { cls: "spark-mem" }], { label: "CPU and memory used over time" });
  const cpu = h("span.spark-value");
  const mem = h("span.spark-value");
  const range = h("span.spark-range");
  const el = h(
    "div.node-spark",
    { "data-testid": "node-spark", hidden: true },
    h(
      "div.spark-legend",
      null,
      h("span.spark-key.spark-cpu", null, h("i.spark-swatch"), "CPU ", cpu),
      h("span.spark-key.spark-mem", null, h("i.spark-swatch"), "Memory ", mem),
      range,
    ),
    spark.el,
  );
  return {
    el,
    update(node) {
      const points = history.nodes.get(node.id)?.points || [];
      setHidden(el, points.length === 0);
      el.dataset.points = String(points.length);
      if (!points.length) return;
      const share = (r) => (r && r.capacity > 0 && r.used !== null && r.used !== undefined ? r.used / r.capacity : null);
      const xs = points.map((p) => p.t);
      const cpus = points.map((p) => share(p.cpu));
      const mems = points.map((p) => share(p.memory_mb));
      const end = windowEnd();
      spark.set({ from: end - rangeSeconds(), to: end, xs, ys: [cpus, mems] });
      const pct = (v) => (v === null ? "–" : fmtPercent(v * 100));
      setText(cpu, pct(cpus[cpus.length - 1]));
      setText(mem, pct(mems[mems.length - 1]));
      setText(range, `last ${history.range}`);
      el.title = `CPU and memory in use over the last ${history.range}, as shares of what ${node.name} has`;
    },
  };
}
