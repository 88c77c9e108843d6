"""Shared by the summaries of scripts/bench_sandbox.sh and scripts/bench_web.sh
(they put scripts/ on PYTHONPATH and `import bench_stats`)."""
import json
import os


def trajectories(work, rounds):
    """(successes, step durations, task durations) over the trajectory files
    of work/round1 .. work/round<rounds>."""
    ok, steps, totals = 0, [], []
    for r in range(1, rounds + 1):
        d = os.path.join(work, f"round{r}", "trajectories")
        for name in os.listdir(d):
            if name.endswith(".json"):
                with open(os.path.join(d, name)) as f:
                    t = json.load(f)
                ok += bool(t["success"])
                totals.append(t["total_duration"])
                steps.extend(s["duration"] for s in t["steps"])
    return ok, steps, totals


def q(xs, f):
    """The f-quantile of xs (seconds), in ms."""
    return sorted(xs)[min(len(xs) - 1, int(f * len(xs)))] * 1000


def paired(rates, bases):
    """Each of `rates` (round i) over the mean of the baseline rounds run just
    before and after it (bases[i], bases[i + 1]): follows a machine whose
    speed drifts during a run better than a ratio of medians."""
    return [rate / ((bases[i] + bases[i + 1]) / 2) for i, rate in enumerate(rates)]


def rate(n, result):
    """Tasks/s of a pipeline round from its result line ("<start> <end> ...",
    seconds since the epoch)."""
    start, end = result.split()[:2]
    return n / (float(end) - float(start))
