// CPU time spent by each process during a phase, read from /proc (Linux only; elsewhere the
// meter reports nothing). It tells where a phase's time went: the Worker runtime (workerd,
// which runs the Worker, its Durable Objects and local D1), the vendor fake, or the load
// generator itself; on a 2-core machine they compete for the same cores.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";

const PROC = existsSync("/proc/self/stat");
const TICKS_PER_S = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU milliseconds of every thread of `pid`, or NaN if it cannot be read. */
function cpuMs(pid) {
  try {
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_S; // utime, stime
  } catch {
    return NaN;
  }
}

/** Pids of the processes below `root` (depth-first), whose command name is `name`. */
export function descendantsNamed(root, name) {
  if (!PROC) return [];
  const found = [];
  const visit = (pid) => {
    let children = [];
    try {
      for (const task of readdirSync(`/proc/${pid}/task`)) {
        children.push(...readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" ").filter(Boolean));
      }
    } catch {
      return;
    }
    for (const child of children) {
      try {
        if (readFileSync(`/proc/${child}/comm`, "utf8").trim() === name) found.push(Number(child));
      } catch {
        // gone already
      }
      visit(child);
    }
  };
  visit(root);
  return found;
}

/**
 * A meter over the named processes plus this one. `start()` then `stop()` gives CPU ms per
 * process for the interval, or `undefined` where /proc is not available.
 */
export function cpuMeter(pids) {
  let before;
  const read = () => {
    const own = process.cpuUsage();
    return {
      ...Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, cpuMs(pid)])),
      load_generator: (own.user + own.system) / 1000,
    };
  };
  return {
    available: PROC && Object.values(pids).every((pid) => Number.isFinite(cpuMs(pid))),
    start() {
      before = read();
    },
    stop() {
      const after = read();
      return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
    },
  };
}
